"""Signed session cookies and CSRF tokens for the pages.

The cookie holds only what is needed to re-check the sign-in on each request
(publisher id plus a fingerprint of the key hash, or a fingerprint of the
admin token), signed with itsdangerous: rotating a key or the admin token
ends the matching sessions. Each session carries its own CSRF token, sent
back in every form (``csrf_token``) or fetch (``X-CSRF-Token``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from postback_core.security import secrets_equal

SESSION_MAX_AGE_SECONDS = 8 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PRE_SESSION_COOKIE = "pb_login_csrf"


def session_secret(configured: str, admin_token: str) -> str:
    """SESSION_SECRET, or a key derived from ADMIN_TOKEN so no extra setting is required."""
    if configured:
        return configured
    return hashlib.sha256(b"postback-pages-session\x00" + admin_token.encode()).hexdigest()


def fingerprint(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


class SessionCookies:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._serializer = URLSafeTimedSerializer(secret, salt="postback-pages")

    def read(self, request: Request, name: str) -> dict[str, Any] | None:
        raw = request.cookies.get(name)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_MAX_AGE_SECONDS)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None

    def write(self, request: Request, response: Response, name: str, data: dict[str, Any]) -> None:
        response.set_cookie(
            name,
            self._serializer.dumps(data),
            max_age=SESSION_MAX_AGE_SECONDS,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )

    @staticmethod
    def clear(response: Response, name: str) -> None:
        response.delete_cookie(name, path="/")


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return secrets_equal(given, expected or "")


def same_origin(request: Request) -> bool:
    """Refuse cross-site posts outright when the browser tells us where they come from."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return True
    return origin.rstrip("/") == f"{request.url.scheme}://{request.url.netloc}"
