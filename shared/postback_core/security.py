"""Secrets: generation, hashing for lookup, constant-time checks and masking."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_BYTES = 24


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
    """Show just enough of a secret to recognise it: ``sec***123``."""
    if secret is None:
        return None
    if len(secret) <= 8:
        return "*" * len(secret)
    return f"{secret[:3]}***{secret[-3:]}"


def mask_in_text(text: str, *secrets_to_hide: str | None) -> str:
    """Replace every occurrence of each secret (raw or percent-encoded) with ``***``."""
    from urllib.parse import quote

    for secret in secrets_to_hide:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), quote(secret, safe="-._~")}:
            text = text.replace(form, "***")
    return text
