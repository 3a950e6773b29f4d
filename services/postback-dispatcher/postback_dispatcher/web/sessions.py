"""Server-side page sessions, CSRF tokens and the cookie that carries them.

The cookie holds only a random session id; the database keeps its SHA-256
with the kind (publisher or operator), the publisher, the session's CSRF
token, its expiry and whether it was revoked. Every request looks the row up
(no cache), so signing out ends the session at once, for every copy of the
cookie. Each sign-in starts a new id (whatever cookie came with the request
is revoked, never adopted), and the session records a fingerprint of the
credential used: rotating a publisher's key or the admin token ends it.

Every form carries the session's CSRF token (``csrf_token``), every fetch
``X-CSRF-Token``. The cookie is ``Secure`` when the request came over
https, directly or through a proxy listed in TRUSTED_PROXIES that says so in
``X-Forwarded-Proto``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.base import unit_of_work
from postback_core.enums import SessionKind
from postback_core.security import secrets_equal
from postback_dispatcher.web.session_repository import LiveSession, SessionRepository

SESSION_MAX_AGE_SECONDS = 8 * 3600
SESSION_ID_BYTES = 32
MAX_COOKIE_LENGTH = 200  # a session id is 43 characters; anything longer is not one
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PRE_SESSION_COOKIE = "pb_login_csrf"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def session_secret(configured: str, admin_token: str) -> str:
    """SESSION_SECRET, or a key derived from ADMIN_TOKEN so no extra setting is required."""
    if configured:
        return configured
    return hashlib.sha256(b"postback-pages-session\x00" + admin_token.encode()).hexdigest()


def fingerprint(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    session_id: str
    csrf_token: str


class SessionStore:
    """Start, look up and end page sessions; also sets and clears their cookie."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: str,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.trusted_proxies = tuple(trusted_proxies)

    async def start(
        self,
        request: Request,
        response: Response,
        cookie: str,
        *,
        kind: SessionKind,
        credential: str,
        publisher_id: int | None = None,
    ) -> Started:
        """A new session (new id, new CSRF token); the request's old one, if any, is revoked."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        csrf = new_csrf_token()
        previous = self._cookie_hash(request, cookie)
        async with unit_of_work(self.sessionmaker) as session:
            repo = SessionRepository(session)
            if previous is not None:
                await repo.revoke(previous)
            await repo.delete_expired()
            await repo.create(
                id_hash=_id_hash(session_id),
                kind=kind,
                publisher_id=publisher_id,
                credential=credential,
                csrf_token=csrf,
                expires_at=datetime.now(UTC) + timedelta(seconds=SESSION_MAX_AGE_SECONDS),
            )
        response.set_cookie(
            cookie,
            session_id,
            max_age=SESSION_MAX_AGE_SECONDS,
            httponly=True,
            samesite="lax",
            secure=self.is_https(request),
            path="/",
        )
        return Started(session_id, csrf)

    async def current(self, request: Request, cookie: str, kind: SessionKind) -> LiveSession | None:
        id_hash = self._cookie_hash(request, cookie)
        if id_hash is None:
            return None
        async with unit_of_work(self.sessionmaker) as session:
            return await SessionRepository(session).live(id_hash, kind)

    async def end(self, request: Request, response: Response, cookie: str) -> None:
        """Revoke the session on the server (every copy of the cookie) and clear the cookie."""
        id_hash = self._cookie_hash(request, cookie)
        if id_hash is not None:
            async with unit_of_work(self.sessionmaker) as session:
                await SessionRepository(session).revoke(id_hash)
        response.delete_cookie(
            cookie, path="/", httponly=True, samesite="lax", secure=self.is_https(request)
        )

    def is_https(self, request: Request) -> bool:
        """https directly, or said so by a trusted proxy (the last X-Forwarded-Proto hop)."""
        if request.url.scheme == "https":
            return True
        if not self.trusted_proxies or request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        if not any(peer in network for network in self.trusted_proxies):
            return False
        forwarded = request.headers.get("x-forwarded-proto", "")
        return forwarded.rsplit(",", 1)[-1].strip().lower() == "https"

    def origin(self, request: Request) -> str:
        """``scheme://host`` as the browser sees this site (behind a trusted TLS proxy too)."""
        scheme = "https" if self.is_https(request) else request.url.scheme
        return f"{scheme}://{request.url.netloc}"

    @staticmethod
    def _cookie_hash(request: Request, cookie: str) -> str | None:
        value = request.cookies.get(cookie)
        if not value or len(value) > MAX_COOKIE_LENGTH:
            return None
        return _id_hash(value)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return secrets_equal(given, expected or "")


def store(request: Request) -> SessionStore:
    sessions: SessionStore = request.app.state.session_store
    return sessions


def same_origin(request: Request) -> bool:
    """Refuse cross-site posts outright when the browser tells us where they come from."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return True
    return origin.rstrip("/") == store(request).origin(request)
