"""Sending one postback: an HTTP GET behind a small interface.

aiohttp was chosen by measurement (docs/http-client-choice.md): one shared
session and connector, redirects followed by hand so every hop passes the SSRF
guard, and URLs built with ``encoded=True`` so the bytes on the wire are exactly
the bytes that were signed.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from postback_dispatcher.ssrf import (
    DNSFailure,
    InvalidTarget,
    SSRFBlocked,
    TargetGuard,
    VettedResolver,
)

MAX_REDIRECTS = 3
EXCERPT_BYTES = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Headers for a given hop's URL (lets the caller re-sign after a redirect).
HeadersForUrl = Callable[[str], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int | None
    duration_ms: float
    response_excerpt: str | None
    error_class: str | None
    error_message: str | None
    retry_after: float | None
    final_url: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class PostbackSender(Protocol):
    async def send(
        self, url: str, headers: Mapping[str, str], *, headers_for: HeadersForUrl | None = None
    ) -> SendResult:
        """GET ``url``; never raises for network or HTTP problems (they are in the result)."""
        ...

    async def close(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class AiohttpPostbackSender:
    def __init__(
        self,
        *,
        timeout_seconds: float,
        guard: TargetGuard,
        max_connections: int = 0,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._guard = guard
        self._max_redirects = max_redirects
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._guard.enabled:
                # The connector may only connect where the guard has vetted.
                connector = aiohttp.TCPConnector(
                    limit=self._max_connections,
                    resolver=VettedResolver(self._guard),
                    use_dns_cache=False,
                )
            else:
                connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                # Never carry cookies from one publisher's endpoint to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def send(
        self, url: str, headers: Mapping[str, str], *, headers_for: HeadersForUrl | None = None
    ) -> SendResult:
        started = time.perf_counter()
        current = url
        hop_headers = headers
        session = self._get_session()

        def result(
            status: int | None = None,
            excerpt: str | None = None,
            error_class: str | None = None,
            error_message: str | None = None,
            retry_after: float | None = None,
        ) -> SendResult:
            return SendResult(
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                response_excerpt=excerpt,
                error_class=error_class,
                error_message=error_message,
                retry_after=retry_after,
                final_url=current,
            )

        for hop in range(self._max_redirects + 1):
            try:
                target = URL(current, encoded=True)
                await self._guard.vet(target)
            except SSRFBlocked as exc:
                return result(error_class="SSRFBlocked", error_message=str(exc))
            except DNSFailure as exc:
                return result(error_class="DNSError", error_message=str(exc))
            except (InvalidTarget, ValueError) as exc:
                return result(error_class="InvalidURL", error_message=str(exc))
            try:
                async with session.get(
                    target, headers=dict(hop_headers), allow_redirects=False
                ) as response:
                    body = await response.content.read(EXCERPT_BYTES)
                    status = response.status
                    location = response.headers.get("Location")
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except TimeoutError:
                return result(error_class="Timeout", error_message="no response in time")
            except aiohttp.ClientConnectorError as exc:
                cause = exc.os_error
                if isinstance(cause, SSRFBlocked):
                    return result(error_class="SSRFBlocked", error_message=str(cause))
                if isinstance(cause, DNSFailure) or isinstance(
                    exc, aiohttp.ClientConnectorDNSError
                ):
                    return result(error_class="DNSError", error_message=str(cause))
                return result(error_class="ConnectionError", error_message=str(cause))
            except aiohttp.InvalidURL as exc:
                return result(error_class="InvalidURL", error_message=str(exc))
            except (aiohttp.ClientError, OSError) as exc:
                return result(error_class=type(exc).__name__, error_message=str(exc))
            excerpt = body.decode("utf-8", "replace") if body else None
            if status in REDIRECT_STATUSES and location:
                if hop == self._max_redirects:
                    return result(
                        status=status,
                        excerpt=excerpt,
                        error_class="TooManyRedirects",
                        error_message=f"more than {self._max_redirects} redirects",
                    )
                try:
                    current = str(target.join(URL(location)))
                except ValueError as exc:
                    return result(status=status, error_class="InvalidURL", error_message=str(exc))
                if headers_for is not None:
                    hop_headers = headers_for(current)
                continue
            error_class = None if 200 <= status < 300 else f"HTTP{status}"
            return result(
                status=status, excerpt=excerpt, error_class=error_class, retry_after=retry_after
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
