"""The postback macro catalogue and URL-template validation.

The eleven macros are the public contract of the integration guide; the
gateway's admin API, the publisher API, the settings page and the
dispatcher's renderer all read them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Macro:
    name: str
    description: str
    example: str

    @property
    def placeholder(self) -> str:
        return "{" + self.name + "}"


MACROS: tuple[Macro, ...] = (
    Macro("click_id", "MaxPPI internal click ID", "12345"),
    Macro("external_id", "Your external click ID from tracking URL", "abc123xyz"),
    Macro("publisher_id", "Your publisher ID", "7"),
    Macro("payout", "Conversion payout amount (USD)", "0.50"),
    Macro("country", "User country code (ISO 2-letter)", "US"),
    Macro("ip", "User IP address", "192.168.1.1"),
    Macro("os", "User operating system", "Windows"),
    Macro("device", "Device type", "desktop"),
    Macro("offer_id", "Offer ID that converted", "42"),
    Macro("smartlink_id", "SmartLink ID used", "7"),
    Macro("security_token", "Your security token", "secret_token_123"),
)
MACRO_NAMES: frozenset[str] = frozenset(m.name for m in MACROS)
EXAMPLE_VALUES: dict[str, str] = {m.name: m.example for m in MACROS}

# Anything that looks like a macro: {word}. Used to find typos such as {payot}.
MACRO_PATTERN = re.compile(r"\{([A-Za-z0-9_]+)\}")
MAX_TEMPLATE_LENGTH = 2048


class TemplateError(ValueError):
    """The template can't be saved; ``unknown_macros`` names offending macros."""

    def __init__(self, message: str, unknown_macros: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unknown_macros = unknown_macros


def find_macros(template: str) -> list[str]:
    return MACRO_PATTERN.findall(template)


def validate_postback_template(template: str) -> list[str]:
    """Check a publisher's postback URL template; return warnings, raise on errors.

    Errors: not an absolute http(s) URL, too long, or macros outside the
    catalogue. Warning: no ``{external_id}`` / ``{click_id}`` to attribute by.
    """
    template = template.strip()
    if not template:
        raise TemplateError("url_template must not be empty")
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise TemplateError(f"url_template must be at most {MAX_TEMPLATE_LENGTH} characters")
    if any(ch.isspace() for ch in template):
        raise TemplateError("url_template must not contain whitespace")
    # Validate the URL shape with macros replaced by harmless text.
    probe = MACRO_PATTERN.sub("x", template)
    parts = urlsplit(probe)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TemplateError("url_template must be an absolute http:// or https:// URL")
    unknown = tuple(dict.fromkeys(n for n in find_macros(template) if n not in MACRO_NAMES))
    if unknown:
        listed = ", ".join("{" + n + "}" for n in unknown)
        raise TemplateError(f"unknown macro(s): {listed}", unknown_macros=unknown)
    used = set(find_macros(template))
    warnings: list[str] = []
    if not used & {"external_id", "click_id"}:
        warnings.append(
            "the template has neither {external_id} nor {click_id}: your tracker will not be "
            "able to attribute the conversion to a click"
        )
    if parts.scheme == "http":
        warnings.append("the template uses http://; https:// is recommended")
    return warnings
