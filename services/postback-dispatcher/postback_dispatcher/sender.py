"""Sending one postback: an HTTP GET behind a small interface.

Redirects are followed by hand so every hop passes the SSRF guard, and URLs are
built with ``encoded=True`` so the bytes on the wire are exactly the bytes that
were signed. ``Http1PostbackSender`` sends with the lean pooled client in
``http1`` (docs/http-client-choice.md says why and what it bounds).
"""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from postback_dispatcher.http1 import ConnectError, Http1Client, HTTPError, Reply
from postback_dispatcher.ssrf import DNSFailure, InvalidTarget, SSRFBlocked, TargetGuard

MAX_REDIRECTS = 3
EXCERPT_BYTES = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER_SECONDS = 86400.0  # later than any retry tier
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)

# Headers for a given hop's URL (lets the caller re-sign after a redirect).
HeadersForUrl = Callable[[str], Mapping[str, str]]


@dataclass(slots=True)
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
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), at most a day.

    Seconds are ASCII digits (a fraction is tolerated): ``inf``, ``nan``, ``1e9`` or
    other scripts' digits are not (float() alone would take them).
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


class Http1PostbackSender:
    """The dispatcher's sender: SSRF vetting and hand-followed redirects around ``http1``.

    One deadline covers the whole send, every hop and its DNS lookup included, so a
    chain of slow redirects can't hold a consumer for a multiple of the timeout.
    ``ssl_context`` verifies https receivers (default: the system's trusted CAs);
    tests inject one that trusts their own CA.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        guard: TargetGuard,
        max_redirects: int = MAX_REDIRECTS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._max_redirects = max_redirects
        self._timeout_seconds = timeout_seconds
        # The client may only connect where the guard has vetted.
        self._client = Http1Client(
            resolve=guard.addresses if guard.enabled else None,
            excerpt_bytes=EXCERPT_BYTES,
            ssl_context=ssl_context,
        )

    async def send(
        self, url: str, headers: Mapping[str, str], *, headers_for: HeadersForUrl | None = None
    ) -> SendResult:
        started = time.perf_counter()
        deadline = started + self._timeout_seconds
        current = url
        hop_headers = headers
        for hop in range(self._max_redirects + 1):
            seconds = deadline - time.perf_counter()
            if seconds <= 0:
                return _result(
                    started,
                    current,
                    error_class="Timeout",
                    error_message=f"no final answer in {self._timeout_seconds:g}s",
                )
            try:
                target = URL(current, encoded=True)
                # A resolver that never answers must not outlast the request deadline.
                await self._guard.vet(target, resolve_seconds=seconds)
            except SSRFBlocked as exc:
                return _result(started, current, error_class="SSRFBlocked", error_message=str(exc))
            except DNSFailure as exc:
                return _result(started, current, error_class="DNSError", error_message=str(exc))
            except (InvalidTarget, ValueError) as exc:
                return _result(started, current, error_class="InvalidURL", error_message=str(exc))
            reply = await self._fetch(target, hop_headers, deadline - time.perf_counter())
            if isinstance(reply, _Error):
                return _result(
                    started, current, error_class=reply.error_class, error_message=reply.message
                )
            status, location = reply.status, reply.location
            if status in REDIRECT_STATUSES and location:
                if hop == self._max_redirects:
                    return _result(
                        started,
                        current,
                        status=status,
                        excerpt=reply.text_excerpt(EXCERPT_BYTES),
                        error_class="TooManyRedirects",
                        error_message=f"more than {self._max_redirects} redirects",
                    )
                try:
                    current = str(target.join(URL(location)))
                except ValueError as exc:
                    return _result(
                        started,
                        current,
                        status=status,
                        error_class="InvalidURL",
                        error_message=str(exc),
                    )
                if headers_for is not None:
                    hop_headers = headers_for(current)
                continue
            return _result(
                started,
                current,
                status=status,
                excerpt=reply.text_excerpt(EXCERPT_BYTES),
                error_class=None if 200 <= status < 300 else f"HTTP{status}",
                retry_after=parse_retry_after(reply.retry_after),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(
        self, target: URL, headers: Mapping[str, str], seconds: float
    ) -> Reply | _Error:
        """One hop within ``seconds``: the answer, or why there is none."""
        try:
            return await self._client.get(target, headers, seconds)
        except TimeoutError:
            return _Error("Timeout", "no response in time")
        except ConnectError as exc:
            cause = exc.os_error
            if isinstance(cause, SSRFBlocked):
                return _Error("SSRFBlocked", str(cause))
            if isinstance(cause, DNSFailure | socket.gaierror):
                return _Error("DNSError", str(cause))
            return _Error(exc.error_class, str(cause))  # ConnectionError or TLSError
        except HTTPError as exc:
            return _Error(exc.error_class, str(exc))
        except OSError as exc:
            return _Error(type(exc).__name__, str(exc))
        except ValueError as exc:  # what the socket layer refuses to look up or connect to
            return _Error("InvalidURL", str(exc))

    async def close(self) -> None:
        await self._client.close()


class _Error:
    __slots__ = ("error_class", "message")

    def __init__(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        self.message = message


def _result(
    started: float,
    final_url: str,
    *,
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
        final_url=final_url,
    )
