"""Macros an offer URL template may carry; the click path renders them on redirect.

Agreed between the admin API (validation, here) and the click path (rendering,
``click_gateway.clicks``): add a name here only together with its rendering.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from postback_core.macros import MACRO_PATTERN, MAX_TEMPLATE_LENGTH

CLICK_ID_MACRO = "click_id"
# In the order the click path passes values to a template (see clicks/cache.py).
OFFER_URL_MACROS: tuple[str, ...] = (
    CLICK_ID_MACRO,  # our internal click id: the advertiser reports conversions with it
    "external_id",
    "publisher_id",
    "smartlink_id",
    "offer_id",
    "country",
    "os",
    "device",
    "ip",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
)


class OfferTemplateError(ValueError):
    def __init__(self, message: str, unknown_macros: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unknown_macros = unknown_macros


def validate_offer_url_template(template: str) -> str:
    """Return the cleaned template or raise ``OfferTemplateError`` saying why not."""
    template = template.strip()
    if not template:
        raise OfferTemplateError("url_template must not be empty")
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise OfferTemplateError(f"url_template must be at most {MAX_TEMPLATE_LENGTH} characters")
    if any(ch.isspace() for ch in template):
        raise OfferTemplateError("url_template must not contain whitespace")
    parts = urlsplit(MACRO_PATTERN.sub("x", template))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OfferTemplateError("url_template must be an absolute http:// or https:// URL")
    used = MACRO_PATTERN.findall(template)
    unknown = tuple(dict.fromkeys(n for n in used if n not in OFFER_URL_MACROS))
    if unknown:
        listed = ", ".join("{" + n + "}" for n in unknown)
        allowed = ", ".join("{" + n + "}" for n in sorted(OFFER_URL_MACROS))
        raise OfferTemplateError(
            f"unknown macro(s): {listed}; allowed: {allowed}", unknown_macros=unknown
        )
    if CLICK_ID_MACRO not in used:
        raise OfferTemplateError(
            "url_template must carry {click_id}: the advertiser reports conversions with it"
        )
    return template
