"""Postback request headers and their HMAC signature.

GET postbacks have no body, so the signature covers ``"<timestamp>.<full URL>"``
— the URL exactly as sent on the wire — keyed with the publisher's security
token. Receivers verify it as described in docs/postback-signatures.md.
"""

from __future__ import annotations

import hashlib
import hmac
import time

USER_AGENT = "MaxPPI-Postback/1.0 (+https://maxppi.com/postback-guide)"
HEADER_ID = "X-Postback-Id"
HEADER_TIMESTAMP = "X-Postback-Timestamp"
HEADER_SIGNATURE = "X-Postback-Signature"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


def compute_signature(token: str, timestamp: int | str, url: str) -> str:
    """``v1=<hex HMAC-SHA256(token, "<timestamp>.<url>")>``."""
    digest = hmac.digest(token.encode(), f"{timestamp}.{url}".encode(), hashlib.sha256).hex()
    return f"{SIGNATURE_VERSION}={digest}"


def postback_headers(
    event_id: str, url: str, security_token: str | None, *, now: float | None = None
) -> dict[str, str]:
    """Headers for one request to ``url``; signed when the publisher has a token."""
    headers = {"User-Agent": USER_AGENT, HEADER_ID: event_id}
    if security_token:
        timestamp = int(time.time() if now is None else now)
        headers[HEADER_TIMESTAMP] = str(timestamp)
        headers[HEADER_SIGNATURE] = compute_signature(security_token, timestamp, url)
    return headers


def signed_headers(event_id: str, security_token: str | None, url: str) -> dict[str, str]:
    """``postback_headers`` with the URL last (so a partial can fix event and token)."""
    headers = {"User-Agent": USER_AGENT, HEADER_ID: event_id}
    if security_token:
        timestamp = int(time.time())
        headers[HEADER_TIMESTAMP] = str(timestamp)
        headers[HEADER_SIGNATURE] = compute_signature(security_token, timestamp, url)
    return headers


def verify_signature(
    token: str,
    url: str,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, reject stale timestamps."""
    if not token or not timestamp or not signature:
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        return False
    expected = compute_signature(token, sent_at, url)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())
