"""Secrets: generation, hashing for lookup, constant-time checks and masking.

Masking lives here once and every place that stores or shows text a secret
could reach (attempt log, dead letters, API answers, pages, logs) calls
:func:`mask_in_text` (or :func:`mask_secret` for a lone secret), so a secret
can't be hidden in one place and leak in another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from urllib.parse import unquote

API_KEY_BYTES = 24
MASK = "****"
SHOWN_TAIL = 4
# A secret shorter than this shows nothing at all: 4 characters of a short
# secret are too large a part of it.
MIN_LENGTH_TO_SHOW_TAIL = 12

# ``scheme://userinfo@``: the last "@" before the path ends the userinfo (as
# urllib and yarl read it), so a password holding a raw "@" is still covered.
_USERINFO_IN_TEXT = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#<>\"'\\]*)@"
)
_USERINFO_AT_START = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://(?P<userinfo>[^/?#]*)@")


def generate_api_key(prefix: str) -> str:
    """A new API key such as ``pub_3q...``; the prefix says what it unlocks."""
    return f"{prefix}_{secrets.token_urlsafe(API_KEY_BYTES)}"


def hash_api_key(api_key: str) -> str:
    """Keys are stored only as their SHA-256; lookup is by this digest.

    A fast hash is enough because keys are long random strings, not passwords.
    """
    return hashlib.sha256(api_key.encode()).hexdigest()


def secrets_equal(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an absent value never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def mask_secret(secret: str | None) -> str | None:
    """``****1234``: the last 4 characters of a long secret, ``****`` for a short one."""
    if secret is None:
        return None
    if len(secret) < MIN_LENGTH_TO_SHOW_TAIL:
        return MASK
    return MASK + secret[-SHOWN_TAIL:]


def url_credentials(url: str | None) -> tuple[str, ...]:
    """The secrets in a URL's userinfo: the password (else the user name) and its Basic form.

    The Basic form is what a client sends for ``user:pass@`` (``Authorization:
    Basic base64(user:pass)``), so a receiver that echoes headers echoes it.
    """
    if not url:
        return ()
    match = _USERINFO_AT_START.match(url)
    if match is None or not match["userinfo"]:
        return ()
    user, _, password = match["userinfo"].partition(":")
    user, password = unquote(user), unquote(password)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return tuple(s for s in (password or user, basic) if s)


def _any_encoding(secret: str) -> str:
    """A regex for ``secret`` raw, percent-encoded (any case, even in part) or with + for space."""
    parts = []
    for char in secret:
        encoded = "".join(
            "%" + "".join(f"[{h.upper()}{h.lower()}]" if h.isalpha() else h for h in f"{b:02X}")
            for b in char.encode()
        )
        options = [re.escape(char), encoded] + (["\\+"] if char == " " else [])
        parts.append("(?:" + "|".join(options) + ")")
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _masker(secrets_to_hide: tuple[str, ...]) -> Callable[[str], str]:
    """One compiled pattern per set of secrets (the hot path asks for the same sets again)."""
    ordered = sorted(set(secrets_to_hide), key=len, reverse=True)  # longest wins an overlap
    if not ordered:
        return lambda text: text
    masks = {secret: mask_secret(secret) or MASK for secret in ordered}
    pattern = re.compile("|".join(f"(?P<s{i}>{_any_encoding(s)})" for i, s in enumerate(ordered)))

    def replace(match: re.Match[str]) -> str:
        assert match.lastgroup is not None
        return masks[ordered[int(match.lastgroup[1:])]]

    return lambda text: pattern.sub(replace, text)


def mask_in_text(text: str, *secrets_to_hide: str | None, url: str | None = None) -> str:
    """``text`` with every secret hidden, in every form it takes in a URL or a header.

    Hides each of ``secrets_to_hide`` and the credentials of ``url`` (the URL
    the text is about: an echoed request carries its Basic header) wherever they
    appear, raw or encoded, as :func:`mask_secret` shows them; and the password
    of any URL written in the text (``https://user:****@host/``; a userinfo
    without a password is all secret: ``https://****@host/``).
    """
    hidden = tuple(s for s in secrets_to_hide if s) + url_credentials(url)
    if hidden:
        text = _masker(hidden)(text)
    if "@" in text:
        text = _USERINFO_IN_TEXT.sub(_masked_userinfo, text)
    return text


def _masked_userinfo(match: re.Match[str]) -> str:
    user, has_password, _ = match["userinfo"].partition(":")
    return match["scheme"] + (user + ":" if has_password else "") + MASK + "@"


def restore_masked_credentials(url: str, stored: str | None) -> str:
    """``url`` as saved from a form that showed ``stored`` masked: the real password is kept.

    A template is shown with its password masked (``user:****@``); saving it
    back unchanged must not replace the password with the mask. Any other
    userinfo is taken as typed.
    """
    new = _USERINFO_AT_START.match(url)
    old = _USERINFO_AT_START.match(stored) if stored else None
    if new is None or old is None or MASK not in new["userinfo"]:
        return url
    assert stored is not None
    if mask_in_text(old.group(0)) != new.group(0):
        return url
    return old.group(0) + url[new.end() :]
