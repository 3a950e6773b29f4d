"""Both ``/metrics`` endpoints during a small end-to-end run, parsed as Prometheus would.

A gateway and a dispatcher of their own (own database and vhost), in this
process; ``test_metrics_multiprocess.py`` runs them as operators do, with
several worker processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from click_gateway.app import create_app as create_gateway
from click_gateway.settings import GatewaySettings
from tests.deploy.metrics_support import Scrape, scrape
from tests.deploy.support import DEPLOY
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
    new_click_id,
)
from tests.postback_dispatcher.conftest import running_dispatcher
from tests.support.infra import create_test_database, create_test_vhost, delete_vhost, drop_database
from tests.support.polling import wait_for
from tests.support.servers import Receiver, run_receiver, serve_asgi

BROWSER = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
}
CRAWLER = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}
# Every label a metric of ours may carry: closed sets only (no ids, URLs, hosts).
ALLOWED_LABELS = {"outcome", "status", "status_class", "reason", "result", "queue"}
ALLOWED_LABELS |= {"delay_seconds", "le"}
METRIC_NAME = re.compile(r"\b((?:click_gateway|postback)_[a-z0-9_]+)\b")


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    dispatcher: httpx.AsyncClient
    receiver: Receiver


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    database_url = await create_test_database("postback_metrics")
    vhost, amqp_url = await create_test_vhost("metrics")
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CLICK_FLUSH_INTERVAL_MS=50,
        CACHE_REFRESH_SECONDS=0.2,
    )
    try:
        async with (
            run_receiver() as receiver,
            running_dispatcher(database_url, amqp_url) as dispatcher,
            serve_asgi(create_gateway(settings)) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url) as gateway,
            httpx.AsyncClient(base_url=dispatcher.base_url) as dispatcher_client,
        ):
            yield Stack(gateway, dispatcher_client, receiver)
    finally:
        await delete_vhost(vhost)
        await drop_database(database_url)


def _delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, labels) - before.value(name, labels)


async def test_both_endpoints_count_a_small_run_exactly(stack: Stack) -> None:
    gateway = stack.gateway
    publisher = await create_publisher(gateway)
    saved = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": f"{stack.receiver.base_url}/pb?c={{click_id}}"},
        headers=ADMIN_HEADERS,
    )
    assert saved.status_code == 200, saved.text
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"])
    smartlink = await create_smartlink(
        gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]]
    )
    code = smartlink["code"]

    async def live() -> bool:
        return (await gateway.get(f"/get/{code}", headers=BROWSER)).status_code == 302

    await wait_for(live, timeout=10, message="the new SmartLink to redirect")
    gateway_before, dispatcher_before = await scrape(gateway), await scrape(stack.dispatcher)

    clicks = [await gateway.get(f"/get/{code}?cid=m-{n}", headers=BROWSER) for n in range(3)]
    assert [c.status_code for c in clicks] == [302, 302, 302]
    assert (await gateway.get(f"/get/{code}", headers=CRAWLER)).status_code == 302
    assert (await gateway.get("/get/no-such-smartlink", headers=BROWSER)).status_code == 404
    click_id = clicks[0].headers["location"].rsplit("clickid=", 1)[1]
    key = {"X-Api-Key": advertiser["api_key"]}
    body = {"click_id": click_id}
    assert (await gateway.post("/api/v1/conversions", json=body, headers=key)).status_code == 201
    assert (await gateway.post("/api/v1/conversions", json=body, headers=key)).status_code == 200
    unknown = {"click_id": str(new_click_id())}
    assert (await gateway.post("/api/v1/conversions", json=unknown, headers=key)).status_code == 404

    async def postback() -> list[object]:
        return list(stack.receiver.matching("/pb"))

    await wait_for(postback, timeout=15, message="the postback")

    gateway_after = await scrape(gateway)  # this process's tallies are flushed by the scrape
    assert (
        _delta(gateway_after, gateway_before, "click_gateway_clicks_total", outcome="redirected")
        == 3
    )
    assert _delta(gateway_after, gateway_before, "click_gateway_clicks_total", outcome="bot") == 1
    assert (
        _delta(gateway_after, gateway_before, "click_gateway_clicks_total", outcome="not_found")
        == 1
    )
    assert (
        _delta(gateway_after, gateway_before, "click_gateway_clicks_total", outcome="fallback") == 0
    )
    assert _delta(gateway_after, gateway_before, "click_gateway_click_duration_seconds_count") == 5
    conversions = "click_gateway_conversions_total"
    assert (
        _delta(gateway_after, gateway_before, conversions, outcome="created", status="approved")
        == 1
    )
    assert (
        _delta(gateway_after, gateway_before, conversions, outcome="duplicate", status="approved")
        == 1
    )
    assert (
        _delta(gateway_after, gateway_before, conversions, outcome="click_not_found", status="none")
        == 1
    )

    async def flushed() -> Scrape | None:
        after = await scrape(gateway)
        return after if after.value("click_gateway_click_buffer_rows") == 0 else None

    after = await wait_for(flushed, timeout=10, message="the click buffer to be written")
    assert _delta(after, gateway_before, "click_gateway_click_flush_duration_seconds_count") >= 1
    assert after.value("click_gateway_outbox_lag_seconds") >= 0
    assert ("click_gateway_outbox_unpublished", frozenset()) in after.samples

    async def delivered() -> Scrape | None:
        now = await scrape(stack.dispatcher)
        moved = _delta(
            now, dispatcher_before, "postback_dispatcher_messages_total", result="delivered"
        )
        attempted = _delta(
            now,
            dispatcher_before,
            "postback_attempts_total",
            outcome="delivered",
            status_class="2xx",
            reason="none",
        )
        timed = _delta(now, dispatcher_before, "postback_delivery_latency_seconds_count")
        return now if moved == attempted == timed == 1 else None

    dispatcher_after = await wait_for(delivered, timeout=10, message="delivered counted once")
    assert (
        _delta(
            dispatcher_after,
            dispatcher_before,
            "postback_dispatcher_messages_total",
            result="retried",
        )
        == 0
    )
    assert dispatcher_after.value("postback_broker_up") == 1
    assert dispatcher_after.value("postback_work_queue_consumers") >= 1
    assert (
        "postback_queue_messages",
        frozenset({("queue", "postback.work")}),
    ) in dispatcher_after.samples
    tiers = {
        dict(labels)["delay_seconds"]
        for name, labels in dispatcher_after.samples
        if name == "postback_retry_tier_messages"
    }
    assert tiers == {"0.3", "0.6"}  # the test dispatcher's POSTBACK_RETRY_DELAYS
    assert dispatcher_after.value("postback_paused_rules") == 0
    assert ("postback_dead_letters_open", frozenset()) in dispatcher_after.samples
    assert ("postback_payout_at_risk", frozenset()) in dispatcher_after.samples

    for result in (gateway_after, dispatcher_after):
        for family, kind in result.families.items():
            assert f"# TYPE {family}" in result.text or f"# TYPE {family}_total" in result.text
            assert result.helps[family], f"{family} has no HELP"
            assert kind in ("counter", "gauge", "histogram"), family
        labels = {name for _, pairs in result.samples for name, _ in pairs}
        assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS


DASHBOARD = DEPLOY / "grafana" / "postback-platform.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def _names_used_by_monitoring(dashboard_path: Path, alerts_path: Path) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    dashboard = json.loads(dashboard_path.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used.setdefault("dashboard", set()).update(METRIC_NAME.findall(target["expr"]))
    rules = yaml.safe_load(alerts_path.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used.setdefault("alerts", set()).update(METRIC_NAME.findall(rule["expr"]))
    return used


async def _unexposed(stack: Stack, dashboard: Path, alerts: Path) -> dict[str, set[str]]:
    exposed = (await scrape(stack.gateway)).sample_names()
    exposed |= (await scrape(stack.dispatcher)).sample_names()
    used = _names_used_by_monitoring(dashboard, alerts)
    assert used["dashboard"] and used["alerts"]
    return {where: names - exposed for where, names in used.items() if names - exposed}


async def test_every_metric_the_dashboard_and_alerts_use_is_exposed(stack: Stack) -> None:
    assert await _unexposed(stack, DASHBOARD, ALERTS) == {}


async def test_the_name_check_catches_a_misspelt_metric(stack: Stack, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][-1]["targets"].append({"expr": "sum(rate(postback_atempts_total[5m]))"})
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(dashboard))
    assert await _unexposed(stack, broken, ALERTS) == {"dashboard": {"postback_atempts_total"}}
