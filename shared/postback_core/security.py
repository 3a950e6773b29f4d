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
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote

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
_ESCAPE = re.compile(r"%[0-9A-F]{2}")
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
    if not url or "@" not in url:
        return ()
    match = _USERINFO_AT_START.match(url)
    if match is None or not match["userinfo"]:
        return ()
    user, _, password = match["userinfo"].partition(":")
    user, password = unquote(user), unquote(password)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return tuple(s for s in (password or user, basic) if s)


def _lower_escapes(text: str) -> str:
    return _ESCAPE.sub(lambda m: m.group().lower(), text)


@dataclass(frozen=True, slots=True)
class _Forms:
    mask: str  # what replaces the secret
    exact: tuple[str, ...]  # raw, percent-encoded upper/lower, + for space; longest first
    anchors: tuple[str, ...]  # runs of 3+ letters and digits: encoders leave them raw


@functools.lru_cache(maxsize=4096)
def _forms(secret: str) -> _Forms:
    encoded = {
        quote(secret, safe=""),
        quote(secret, safe="-._~"),
        quote(secret),
        quote_plus(secret, safe=""),
        quote_plus(secret),
    }
    exact = {secret, secret.replace(" ", "+")} | encoded | {_lower_escapes(e) for e in encoded}
    return _Forms(
        mask=mask_secret(secret) or MASK,
        exact=tuple(sorted(exact, key=len, reverse=True)),
        anchors=tuple(run for run in re.findall(r"[A-Za-z0-9]+", secret) if len(run) >= 3),
    )


@functools.lru_cache(maxsize=4096)
def _any_encoding(secret: str) -> re.Pattern[str]:
    """``secret`` raw or percent-encoded character by character, in any mix (the slow path)."""
    parts = []
    for char in secret:
        encoded = "".join(
            "%" + "".join(f"[{h.upper()}{h.lower()}]" if h.isalpha() else h for h in f"{b:02X}")
            for b in char.encode()
        )
        options = [re.escape(char), encoded] + ([r"\+"] if char == " " else [])
        parts.append("(?:" + "|".join(options) + ")")
    return re.compile("".join(parts))


def _hide(text: str, secret: str) -> str:
    """Replace every form of one secret; the usual forms by ``str.replace`` (the hot path).

    The character-by-character pattern (an unusual mix of raw and encoded
    characters) runs only when some of the secret is still there to be found.
    """
    forms = _forms(secret)
    for form in forms.exact:
        if form in text:
            text = text.replace(form, forms.mask)
    if any(anchor in text for anchor in forms.anchors) or (
        not forms.anchors and ("%" in text or "+" in text)
    ):
        text = _any_encoding(secret).sub(forms.mask, text)
    return text


# A cut text ending in this many characters (or more) of a secret's start loses them.
MIN_CUT_PREFIX = 3


def _hide_cut_tail(text: str, secret: str) -> str:
    """Mask the end of ``text`` when it is the start of one of the secret's forms."""
    forms = _forms(secret)
    for form in forms.exact:
        start = max(len(text) - len(form) + 1, 0)
        at = text.find(form[0], start)
        while at != -1:
            if len(text) - at >= MIN_CUT_PREFIX and form.startswith(text[at:]):
                return text[:at] + MASK  # (its tail was cut off: nothing of it to show)
            at = text.find(form[0], at + 1)
    return text


def mask_in_text(
    text: str, *secrets_to_hide: str | None, url: str | None = None, cut: bool = False
) -> str:
    """``text`` with every secret hidden, in every form it takes in a URL or a header.

    Hides each of ``secrets_to_hide`` and the credentials of ``url`` (the URL
    the text is about: an echoed request carries its Basic header) wherever they
    appear, raw or encoded, as :func:`mask_secret` shows them; and the password
    of any URL written in the text (``https://user:****@host/``; a userinfo
    without a password is all secret: ``https://****@host/``). ``cut``: the text
    was truncated before it got here (a response excerpt), so it may end in the
    first part of a secret; that part is masked too.
    """
    hidden = [s for s in secrets_to_hide if s]
    if url:
        hidden += url_credentials(url)
    if len(hidden) > 1:
        hidden.sort(key=len, reverse=True)  # the longer wins an overlap
    for secret in hidden:
        text = _hide(text, secret)
        if cut:
            text = _hide_cut_tail(text, secret)
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
