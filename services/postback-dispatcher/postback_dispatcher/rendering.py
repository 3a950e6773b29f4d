"""Turn a publisher's postback URL template and a conversion event into the URL to call.

Templates are parsed once (cached per template string) into literal pieces and
macro slots, so rendering on the hot path is a join. Every macro value is
percent-encoded with ``quote(value, safe="")`` wherever it stands: an external
id ``a b&c=d`` arrives at the receiver as one intact value, and a ``/`` in a
path segment can't create a new segment. Literal template text is only
repaired (spaces and non-ASCII percent-encoded; existing ``%XX`` kept), so the
rendered string is exactly what goes on the wire and what gets signed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from postback_core.contracts import ConversionEvent
from postback_core.macros import MACRO_NAMES, MACRO_PATTERN

# Characters allowed to stay as they are in the literal parts of a template:
# the URL's own delimiters, an already-encoded "%XX", and braces (an unknown
# "{...}" is left exactly as the publisher wrote it).
_LITERAL_SAFE = "!#$%&'()*+,/:;=?@[]{}~-._"
_TWO_PLACES = Decimal("0.01")
# Values made only of unreserved characters need no encoding (most ids, codes, payouts).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def format_payout(payout: Decimal) -> str:
    """A plain decimal with at least two places: ``0.50``, ``2.00``, ``1.2345``."""
    value = payout.normalize()
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        value = value.quantize(_TWO_PLACES)
    return format(value, "f")


def _text(value: object) -> str:
    return "" if value is None else str(value)


def macro_values(event: ConversionEvent, security_token: str | None) -> dict[str, str]:
    """The value of each of the eleven macros for this event; missing values are empty."""
    return {
        "click_id": str(event.click_id),
        "external_id": _text(event.external_id),
        "publisher_id": str(event.publisher_id),
        "payout": format_payout(event.payout),
        "country": _text(event.country),
        "ip": _text(event.ip),
        "os": _text(event.os),
        "device": _text(event.device),
        "offer_id": _text(event.offer_id),
        "smartlink_id": _text(event.smartlink_id),
        "security_token": _text(security_token),
    }


# A parsed template: literal strings alternate with macro names (odd positions).
ParsedTemplate = tuple[str, ...]


@lru_cache(maxsize=4096)
def parse_template(template: str) -> ParsedTemplate:
    """Split a template into literal text and known macros; unknown ``{...}`` stay literal."""
    pieces: list[str] = []
    literal: list[str] = []
    position = 0
    for match in MACRO_PATTERN.finditer(template):
        name = match.group(1)
        if name not in MACRO_NAMES:
            continue
        literal.append(template[position : match.start()])
        pieces.append(quote("".join(literal), safe=_LITERAL_SAFE))
        pieces.append(name)
        literal = []
        position = match.end()
    literal.append(template[position:])
    pieces.append(quote("".join(literal), safe=_LITERAL_SAFE))
    return tuple(pieces)


def render_postback_url(template: str, values: Mapping[str, str | None]) -> str:
    """Substitute the macros of ``template`` with percent-encoded ``values``."""
    parsed = parse_template(template.strip())
    out: list[str] = []
    for index, piece in enumerate(parsed):
        if index % 2 == 0:
            out.append(piece)
        else:
            value = values.get(piece)
            if value:
                out.append(value if _UNRESERVED.fullmatch(value) else quote(value, safe=""))
    return "".join(out)


@lru_cache(maxsize=1024)
def _payout_text(payout: str) -> str:
    return format_payout(Decimal(payout))


def _encoded(value: str | None) -> str:
    if not value:
        return ""
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


def _int_text(value: int | None) -> str:
    # Digits (and a minus sign) are unreserved: nothing to encode.
    return "" if value is None else str(value)


# Each macro's percent-encoded value, from the event and the security token; the
# same values as ``render_postback_url(template, macro_values(event, token))``.
_MACRO_VALUE: dict[str, Callable[[Any, str | None], str]] = {
    "click_id": lambda e, t: _int_text(e.click_id),
    "external_id": lambda e, t: _encoded(e.external_id),
    "publisher_id": lambda e, t: _int_text(e.publisher_id),
    "payout": lambda e, t: _payout_text(str(e.payout)),
    "country": lambda e, t: _encoded(e.country),
    "ip": lambda e, t: _encoded(e.ip),
    "os": lambda e, t: _encoded(e.os),
    "device": lambda e, t: _encoded(e.device),
    "offer_id": lambda e, t: _int_text(e.offer_id),
    "smartlink_id": lambda e, t: _int_text(e.smartlink_id),
    "security_token": lambda e, t: _encoded(t),
}


class CompiledTemplate:
    """A publisher's template parsed once: render per event, and its host when fixed.

    ``host`` is ``host[:port]`` lower-cased (the unit of per-host fairness) when no
    macro stands in the authority (the usual case), else None.
    """

    __slots__ = ("_first", "_steps", "host")

    def __init__(self, template: str) -> None:
        template = template.strip()
        parsed = parse_template(template)
        self._first = parsed[0]
        self._steps = tuple(
            (_MACRO_VALUE[parsed[i]], parsed[i + 1]) for i in range(1, len(parsed), 2)
        )
        try:
            netloc = urlsplit(template).netloc
        except ValueError:
            netloc = "{"
        self.host = None if "{" in netloc else netloc.lower().rsplit("@", 1)[-1]

    def render(self, event: Any, security_token: str | None) -> str:
        """The URL for ``event`` (a ConversionEvent or the dispatcher's DispatchEvent)."""
        out = [self._first]
        for value_of, literal in self._steps:
            out.append(value_of(event, security_token))
            out.append(literal)
        return "".join(out)


@lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    return CompiledTemplate(template)
