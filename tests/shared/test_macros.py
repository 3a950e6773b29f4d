from __future__ import annotations

import pytest

from postback_core.macros import MACROS, TemplateError, validate_postback_template


def test_catalogue_is_the_eleven_macros_of_the_guide() -> None:
    assert [m.name for m in MACROS] == [
        "click_id", "external_id", "publisher_id", "payout", "country", "ip",
        "os", "device", "offer_id", "smartlink_id", "security_token",
    ]  # fmt: skip


def test_valid_template_has_no_warnings() -> None:
    template = "https://t.example.com/pb?cid={external_id}&p={payout}&t={security_token}"
    assert validate_postback_template(template) == []


def test_misspelt_macros_are_named() -> None:
    with pytest.raises(TemplateError) as caught:
        validate_postback_template("https://t.example.com/?c={external_id}&p={payot}&x={cuntry}")
    assert caught.value.unknown_macros == ("payot", "cuntry")
    assert "{payot}" in str(caught.value)


@pytest.mark.parametrize(
    "template", ["", "ftp://x.example.com/{click_id}", "/relative?c={click_id}", "https://"]
)
def test_rejects_non_absolute_http_urls(template: str) -> None:
    with pytest.raises(TemplateError):
        validate_postback_template(template)


def test_template_without_click_reference_is_saved_with_a_warning() -> None:
    warnings = validate_postback_template("https://t.example.com/pb?payout={payout}")
    assert any("external_id" in w for w in warnings)
