"""The pages in a real Chromium: what a publisher and an operator actually do.

Screenshots of every page land in ``<tmp>/postback-screenshots`` for review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.models import DeadLetter
from tests.postback_dispatcher.portal_fixtures import create_publisher, insert_dead_letter
from tests.support.polling import wait_for
from tests.support.servers import Receiver

pytestmark = pytest.mark.browser

Db = async_sessionmaker[AsyncSession]


async def test_publisher_edits_checks_saves_and_tests_their_postback(
    page: Any, portal_url: str, db: Db, receiver: Receiver, screenshots: Path
) -> None:
    publisher = await create_publisher(db)

    await page.goto(f"{portal_url}/portal/login")
    await page.screenshot(path=str(screenshots / "01-publisher-login.png"))
    await page.get_by_label("Publisher API key").fill("pub_wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login-error")).to_contain_text("not valid")
    await page.get_by_label("Publisher API key").fill(publisher.api_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Postback Settings")).to_be_visible()
    await page.screenshot(path=str(screenshots / "02-settings-empty.png"), full_page=True)

    template = page.get_by_label("Postback URL template")
    error = page.locator("#template-error")
    # A typo is flagged inline while typing...
    await template.fill(f"{receiver.base_url}/pb?cid={{external_id}}&p={{payot}}")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("{payot}")
    await expect(template).to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=str(screenshots / "03-settings-typo-inline.png"))
    # ...and refused on save, still inline, nothing stored.
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#template-error")).to_contain_text("{payot}")
    await expect(page.get_by_label("Postback URL template")).to_have_value(
        f"{receiver.base_url}/pb?cid={{external_id}}&p={{payot}}"
    )
    await page.screenshot(path=str(screenshots / "04-settings-typo-on-save.png"))

    good = (
        f"{receiver.base_url}/pb?cid={{external_id}}&payout={{payout}}&pub={{publisher_id}}"
        "&token={security_token}"
    )
    await page.get_by_label("Postback URL template").fill(good)
    await page.get_by_label("Security token (optional)").fill("tok_browser_secret_42")
    await expect(page.locator("#template-error")).to_be_hidden()
    await expect(page.locator("#preview-url")).to_have_text(
        f"{receiver.base_url}/pb?cid=abc123xyz&payout=0.50&pub={publisher.id}&token=****t_42"
    )
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#notice")).to_contain_text("saved")
    await expect(page.locator("#token-hint")).to_contain_text("****t_42")

    await page.get_by_role("button", name="Send test postback").click()
    await expect(page.locator("#test-status")).to_have_text("HTTP 200")
    await expect(page.locator("#deliveries-body")).to_contain_text("test")
    await page.screenshot(path=str(screenshots / "05-settings-test-sent.png"), full_page=True)

    [received] = receiver.matching("/pb")
    assert received.headers["X-Postback-Test"] == "1"
    assert received.query == {
        "cid": "abc123xyz",
        "payout": "0.50",
        "pub": str(publisher.id),
        "token": "tok_browser_secret_42",
    }
    assert "tok_browser_secret_42" not in await page.content()

    await page.locator("#how-it-works").screenshot(path=str(screenshots / "07-flow-diagram.png"))
    await page.locator("#deliveries").screenshot(path=str(screenshots / "08-deliveries.png"))

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()
    await assert_fits_viewport(page)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(screenshots / "06a-settings-mobile-top.png"))
    await page.locator("#deliveries").scroll_into_view_if_needed()
    await page.screenshot(path=str(screenshots / "06b-settings-mobile-deliveries.png"))
    await page.locator("#macros").scroll_into_view_if_needed()
    await page.screenshot(path=str(screenshots / "06c-settings-mobile-macros.png"))


async def test_operator_reviews_and_replays_a_dead_letter_which_is_delivered(
    page: Any, portal_url: str, db: Db, receiver: Receiver, screenshots: Path, admin_token: str
) -> None:
    # The publisher's endpoint was broken; they fixed the URL; now the operator replays.
    publisher = await create_publisher(
        db, url_template=f"{receiver.base_url}/fixed?cid={{external_id}}&amount={{payout}}"
    )
    row = await insert_dead_letter(
        db, publisher_id=publisher.id, payout="1.75", attempts=3, external_id="ext-replay-1"
    )
    await insert_dead_letter(
        db, publisher_id=publisher.id, payout="0.40", reason="permanent_http_4xx"
    )

    await page.goto(f"{portal_url}/operator/dead-letters")
    await expect(page).to_have_url(f"{portal_url}/operator/login")
    await page.screenshot(path=str(screenshots / "10-operator-login.png"))
    await page.get_by_label("Admin token").fill(admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Dead letters", exact=True)).to_be_visible()

    await page.get_by_label("Publisher ID").fill(str(publisher.id))
    await page.get_by_role("button", name="Filter").click()
    listed = page.locator(f"#dl-{row.id}")
    await expect(listed).to_contain_text("$1.75")
    await expect(page.locator("#risk-table")).to_contain_text(f"#{publisher.id}")
    await page.screenshot(path=str(screenshots / "11-operator-list.png"), full_page=True)

    await page.get_by_role("link", name=f"#{row.id}").click()
    history = page.locator("#attempt-history tbody tr")
    await expect(history).to_have_count(3)
    await expect(page.locator("#attempt-history")).to_contain_text("HTTP503")
    await page.screenshot(path=str(screenshots / "12-operator-detail.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Replay", exact=True).click()
    await expect(page.locator("#notice")).to_contain_text(f"#{row.id} replayed")
    await expect(page.locator(f"#dl-{row.id}")).to_have_count(0)
    await page.screenshot(path=str(screenshots / "13-operator-after-replay.png"), full_page=True)

    delivered = await wait_for(
        lambda: _async(receiver.matching("/fixed")), timeout=15, message="the replayed postback"
    )
    assert delivered[0].query == {"cid": "ext-replay-1", "amount": "1.75"}
    async with db() as session:
        state = await session.scalar(select(DeadLetter.state).where(DeadLetter.id == row.id))
    assert state == "replayed"


async def test_operator_bulk_replay_shows_the_dry_run_count_first(
    page: Any, portal_url: str, db: Db, screenshots: Path, admin_token: str, event_tap: Any
) -> None:
    publisher = await create_publisher(db)
    for payout in ("0.25", "0.50", "1.00"):
        await insert_dead_letter(db, publisher_id=publisher.id, payout=payout)

    await page.goto(f"{portal_url}/operator/login")
    await page.get_by_label("Admin token").fill(admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.goto(f"{portal_url}/operator/dead-letters?publisher_id={publisher.id}")
    await page.get_by_role("button", name="Replay all matching…").click()
    await expect(page.locator("#dry-run-count")).to_have_text("3")
    await expect(page.locator("#dry-run-payout")).to_have_text("$1.75")
    await page.screenshot(path=str(screenshots / "14-operator-bulk-confirm.png"), full_page=True)
    await page.get_by_role("button", name="Replay 3 now").click()
    await expect(page.locator("#notice")).to_contain_text("3 dead letter(s) replayed")
    await expect(page.locator("#dead-letters")).to_contain_text("No open dead letters")

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{portal_url}/operator/dead-letters")
    await assert_fits_viewport(page)
    await page.screenshot(path=str(screenshots / "15-operator-list-mobile.png"), full_page=True)


async def _async(value: Any) -> Any:
    return value


async def assert_fits_viewport(page: Any) -> None:
    """Nothing makes a phone-sized page scroll sideways (wide tables scroll inside)."""
    overflowing = await page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            if (document.documentElement.scrollWidth <= width) return [];
            return [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > width + 1
                          && !e.closest('.table-wrap, .flow-wrap'))
                .slice(0, 5).map(e => e.tagName + '.' + e.className);
        }"""
    )
    assert overflowing == [], overflowing


async def test_keyboard_only_sign_in_and_visible_focus(
    page: Any, portal_url: str, db: Db, screenshots: Path
) -> None:
    publisher = await create_publisher(db)
    await page.goto(f"{portal_url}/portal/login")
    # The key field carries autofocus; headless Chromium honours it only when the
    # window has focus, so put focus there explicitly. Enter submits.
    await page.get_by_label("Publisher API key").focus()
    await page.keyboard.type(publisher.api_key)
    await page.keyboard.press("Enter")
    # The sign-in page has a "Postback Settings" heading too: wait for the navigation.
    await page.wait_for_url("**/portal/postback")
    await expect(page.get_by_role("heading", name="Postback Settings")).to_be_visible()

    # The first Tab on the settings page reaches the skip link.
    await page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    await expect(skip).to_be_focused()
    await expect(skip).to_be_in_viewport()

    await page.get_by_label("Postback URL template").focus()
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Security token (optional)")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Generate")).to_be_focused()
    outline = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    await page.screenshot(path=str(screenshots / "09-keyboard-focus.png"))
