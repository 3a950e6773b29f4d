"""Every form a secret can take in text we store or show, for "it never leaks" assertions."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def secret_forms(secret: str) -> set[str]:
    """Raw, percent-encoded (both cases, with and without "/" kept), plus-for-space, base64."""
    encoded = {
        quote(secret, safe=""),
        quote(secret),
        quote(secret, safe="-._~"),
        quote_plus(secret, safe=""),
        quote_plus(secret),
        secret.replace(" ", "+"),
    }
    forms = {secret} | encoded | {_lower_escapes(e) for e in encoded}
    forms.add(base64.b64encode(secret.encode()).decode())
    return forms


def basic_auth_form(user: str, password: str) -> str:
    """What a client sends for ``user:password@`` in a URL."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """The forms of ``secrets`` found in ``text`` (empty when none leaks)."""
    return sorted({form for secret in secrets for form in secret_forms(secret) if form in text})
