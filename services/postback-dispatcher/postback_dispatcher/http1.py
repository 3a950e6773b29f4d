"""A lean HTTP/1.1 GET client for postbacks: asyncio protocol + httptools, keep-alive pool.

A postback is one GET whose answer matters for its status line and a short
excerpt of the body. aiohttp's general-purpose request machinery (request and
response objects, header multidicts, timers, tracing hooks) costs more CPU per
postback than all the rest of the dispatcher's own work, so the hot path uses
this client instead. It does exactly what the sender needs and nothing more:

- one request at a time per connection, connections kept alive per
  (scheme, host, port) and reused last-in first-out; idle ones are closed after
  ``KEEPALIVE_SECONDS`` or when the server says ``Connection: close``;
- new connections go only to the addresses the SSRF guard vetted (``connect``
  is given by the sender), TLS with the default verifying context for https
  (or the one given);
- the response is parsed by httptools; the body is read to its end (so the
  connection can be reused) but only the first ``excerpt_bytes`` are kept, and
  a body longer than that by ``MAX_DRAIN_BYTES`` is answered there and the
  connection closed instead;
- the head is counted before the parser sees it (httptools keeps a header
  whole until it ends): a status or header line over ``MAX_LINE_BYTES`` or more
  than ``MAX_HEADERS`` headers is refused as ``ResponseTooLarge``;
- interim 1xx answers are skipped; bytes after the final answer mean the
  connection is out of step, so it is closed (the answer stands);
- one deadline per request covers connecting, sending and the whole answer;
- a request on a reused connection that the server had already closed (no
  answer byte received) is sent once more on a fresh connection.

The URL goes on the wire byte for byte as given (it was signed that way).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast
from urllib.parse import unquote

import httptools
from yarl import URL

KEEPALIVE_SECONDS = 15.0
# aiohttp's defaults: the status line and each header line, and the header count.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
# The whole head can't be longer than that many maximal lines; nor can what a
# response sends besides its body (chunk framing, extensions, trailers).
MAX_HEAD_BYTES = (MAX_HEADERS + 1) * (MAX_LINE_BYTES + 2) + 2
# Body read past the excerpt so the connection can serve the next request.
MAX_DRAIN_BYTES = 64 << 10
# Never on the wire in a request head (CR and LF only as line ends, counted).
_CONTROL_BYTES = bytes([*range(0x0A), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


class HTTPError(Exception):
    """A request that got no usable answer; ``error_class`` names the kind for the log."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class _StopParsing(Exception):
    """Raised from a parser callback: nothing more of this connection is read."""


class Reply:
    __slots__ = ("content_encoding", "excerpt", "location", "retry_after", "status")

    def __init__(self) -> None:
        self.status = 0
        self.excerpt = b""
        self.location: str | None = None
        self.retry_after: str | None = None
        self.content_encoding: str | None = None

    def text_excerpt(self, limit: int) -> str | None:
        body = self.excerpt
        if not body:
            return None
        if self.content_encoding in ("gzip", "deflate", "x-gzip"):
            with contextlib.suppress(zlib.error):
                body = zlib.decompressobj(47).decompress(body, limit)
        return body[:limit].decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    __slots__ = (
        "_excerpt_bytes",
        "_parser",
        "_reply",
        "_waiter",
        "body_bytes",
        "closed",
        "complete",
        "framing_bytes",
        "got_bytes",
        "head_lines",
        "headers_done",
        "idle_since",
        "keep_alive",
        "line_bytes",
        "sized",
        "transport",
    )

    def __init__(self, excerpt_bytes: int) -> None:
        self._excerpt_bytes = excerpt_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Reply] | None = None
        self._reply = Reply()
        self._parser: Any = None
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.body_bytes = 0
        self.sized = False
        self.head_lines = self.line_bytes = self.framing_bytes = 0

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection can't be trusted any more.
            self.close()
            return
        self.got_bytes = True
        in_head = not self.headers_done
        if in_head:
            problem = self._count_head(data)
            if problem is not None:
                self._fail(HTTPError("ResponseTooLarge", problem))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HTTPError("ClientResponseError", "unexpected protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            # After the answer (a callback stopped the parser) this only closes.
            self._fail(HTTPError("ClientResponseError", f"invalid HTTP response: {exc}"))
            return
        if in_head and self.headers_done:
            return  # the usual case: this packet ended the head (counted above)
        # Bytes that were not body: more head (a backstop for the line counting),
        # or chunk framing, extensions and trailers, which httptools also keeps whole.
        self.framing_bytes += len(data)
        if self.framing_bytes - self.body_bytes > MAX_HEAD_BYTES:
            self._fail(HTTPError("ResponseTooLarge", "response head or chunk framing too long"))

    def _count_head(self, data: bytes) -> str | None:
        """Why the head in ``data`` is refused (a line too long, too many), or None.

        Usually the whole head is in the first packet and shorter than one line's
        limit: two scans in C. Otherwise line by line, across packets.
        """
        if self.head_lines == 0 and self.line_bytes == 0:
            end = data.find(b"\r\n\r\n", 0, MAX_LINE_BYTES + 4)
            if end >= 0:
                headers = data.count(b"\n", 0, end)
                if headers > MAX_HEADERS:
                    return f"more than {MAX_HEADERS} response headers"
                self.head_lines = headers + 1
                return None
        start, size = 0, len(data)
        while start < size:
            newline = data.find(b"\n", start)
            if newline < 0:
                self.line_bytes += size - start
                break
            length = self.line_bytes + newline - start  # with its \r, if any
            self.line_bytes = 0
            start = newline + 1
            if length <= 1 and self.head_lines:
                return None  # the empty line: the head ends here
            if length > MAX_LINE_BYTES + 1:
                return self._line_too_long()
            self.head_lines += 1
            if self.head_lines > MAX_HEADERS + 1:
                return f"more than {MAX_HEADERS} response headers"
        if self.line_bytes > MAX_LINE_BYTES + 1:
            return self._line_too_long()
        return None

    def _line_too_long(self) -> str:
        line = "status line" if self.head_lines == 0 else "response header line"
        return f"{line} longer than {MAX_LINE_BYTES} bytes"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and not self.sized:
                # A body delimited by the end of the connection: the answer is complete.
                self.keep_alive = False
                self.complete = True
                waiter.set_result(self._reply)
            else:
                reason = str(exc) if exc else "Server disconnected"
                waiter.set_exception(HTTPError("ServerDisconnectedError", reason))

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # Bytes after the final answer: stop before they touch it.
            self.keep_alive = False
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 8 and name.lower() == b"location":
            self._reply.location = value.decode("latin-1")
        elif len(name) == 11 and name.lower() == b"retry-after":
            self._reply.retry_after = value.decode("latin-1")
        elif len(name) == 16 and name.lower() == b"content-encoding":
            self._reply.content_encoding = value.decode("latin-1").strip().lower()
        elif (len(name) == 14 and name.lower() == b"content-length") or (
            len(name) == 17 and name.lower() == b"transfer-encoding"
        ):
            self.sized = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self._reply.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        room = self._excerpt_bytes - len(self._reply.excerpt)
        if room > 0:
            self._reply.excerpt += body[:room]
        if self.body_bytes > self._excerpt_bytes + MAX_DRAIN_BYTES:
            # Enough of it: answer now and drop the connection instead of reading on.
            self.complete = True
            self.keep_alive = False
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(self._reply)
            self.close()
            raise _StopParsing

    def on_message_complete(self) -> None:
        if self._reply.status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._reply = Reply()
            self.headers_done = self.sized = False
            return
        self.complete = True
        self.keep_alive = bool(self._parser.should_keep_alive())
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._reply)

    # -- use -----------------------------------------------------------------------

    def _fail(self, error: HTTPError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def start(self, request: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._reply = Reply()
        self._parser = httptools.HttpResponseParser(self)
        self.got_bytes = self.headers_done = self.complete = self.keep_alive = False
        self.sized = False
        self.body_bytes = self.head_lines = self.line_bytes = self.framing_bytes = 0
        self.transport.write(request)
        return self._waiter

    def finish(self) -> None:
        """After an answer: the next request may come, or the connection ends."""
        self._waiter = None
        self._parser = None
        if not (self.complete and self.keep_alive):
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


class Http1Client:
    """Pooled GETs; ``resolve(host, port)`` says which addresses a new connection may use.

    ``ssl_context`` verifies https receivers (default: the system's trusted CAs).
    """

    def __init__(
        self,
        *,
        resolve: Callable[[str, int], Awaitable[list[tuple[str, int]]]] | None,
        excerpt_bytes: int,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolve = resolve
        self._excerpt_bytes = excerpt_bytes
        self._keepalive = keepalive_seconds
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._ssl = ssl_context
        self._last_sweep = time.monotonic()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    @staticmethod
    def request_bytes(url: URL, headers: Mapping[str, str]) -> bytes:
        """The request head, byte for byte: the URL's path and query exactly as given."""
        path = url.raw_path_qs or "/"
        if not path.startswith("/"):
            path = "/" + path
        auth = ""
        if url.raw_user:
            credentials = f"{unquote(url.raw_user)}:{unquote(url.raw_password or '')}"
            auth = f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        host = url.host_port_subcomponent or ""
        if " " in path or " " in host:
            raise HTTPError("InvalidURL", "space in the request target or host")
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{auth}{fields}\r\n"
        wire = head.encode("latin-1")
        # The only CR and LF are the line ends, and no other control character.
        lines = len(headers) + (5 if auth else 4)
        if (
            wire.count(b"\n") != lines
            or wire.count(b"\r") != lines
            or len(wire.translate(None, _CONTROL_BYTES)) != len(wire)
        ):
            raise HTTPError("InvalidURL", "line break or control character in the request head")
        return wire

    async def get(self, url: URL, headers: Mapping[str, str], seconds: float) -> Reply:
        """GET ``url``; raises HTTPError (or TimeoutError) when there is no answer."""
        scheme = url.scheme
        host = url.raw_host or ""
        port = url.port or (443 if scheme == "https" else 80)
        try:
            request = self.request_bytes(url, headers)
        except UnicodeEncodeError as exc:
            raise HTTPError("InvalidURL", f"non-ASCII request head: {exc}") from exc
        key = (scheme, host.lower(), port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for attempt in (1, 2):
            conn = self._take_idle(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(scheme, host, port, deadline - loop.time())
            self._busy.add(conn)
            waiter = conn.start(request)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                reply = await waiter
            except HTTPError:
                if reused and not conn.got_bytes and attempt == 1:
                    continue  # the server had closed the idle connection: once more
                raise
            finally:
                timer.cancel()
                self._busy.discard(conn)
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    conn.finish()
                    self._put_idle(key, conn)
                else:
                    conn.close()
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, scheme: str, host: str, port: int, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if scheme == "https" else None
        bare = host.strip("[]")
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                if self._resolve is None:
                    _transport, conn = await loop.create_connection(
                        lambda: _Connection(self._excerpt_bytes),
                        bare,
                        port,
                        ssl=tls,
                        server_hostname=bare if tls else None,
                    )
                    return conn
                addresses = await self._resolve(host, port)
                last: OSError | None = None
                for address, family in addresses:
                    try:
                        _transport, conn = await loop.create_connection(
                            lambda: _Connection(self._excerpt_bytes),
                            address,
                            port,
                            family=family,
                            ssl=tls,
                            server_hostname=bare if tls else None,
                        )
                        return conn
                    except OSError as exc:
                        last = exc
                raise last or OSError(f"cannot connect to {host}:{port}")
        except TimeoutError:
            raise
        except ssl.SSLError as exc:
            raise _ConnectError(exc, "TLSError") from exc
        except OSError as exc:
            raise _ConnectError(exc) from exc

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = time.monotonic() - self._keepalive
        while idle:
            conn = idle.pop()
            if conn.usable and conn.idle_since > limit:
                return conn
            conn.close()
        return None

    def _put_idle(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if not conn.usable:
            return
        now = time.monotonic()
        conn.idle_since = now
        self._idle.setdefault(key, []).append(conn)
        if now - self._last_sweep > self._keepalive:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        limit = now - self._keepalive
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable and c.idle_since > limit]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()


class _ConnectError(HTTPError):
    """Could not open a connection; ``os_error`` is why (SSRF refusal, DNS, refused, TLS...)."""

    def __init__(self, os_error: OSError, error_class: str = "ConnectionError") -> None:
        super().__init__(error_class, str(os_error))
        self.os_error = os_error


def _expire(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


ConnectError = _ConnectError
