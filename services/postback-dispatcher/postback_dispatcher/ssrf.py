"""SSRF guard: a postback may only reach public addresses.

Publishers choose their postback URL, so without a guard anyone could make the
dispatcher call internal services or the cloud metadata endpoint. The guard
resolves the host itself and refuses any non-global address; the sender then
connects only to the addresses vetted here (see ``VettedResolver``), so there
is no window for DNS rebinding between the check and the connection. Every
redirect hop is vetted again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> list of (address, family); injectable for tests.
Resolve = Callable[[str, int], Awaitable[list[tuple[str, int]]]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_RESOLVE_CACHE_SECONDS = 30.0


class SSRFBlocked(OSError):
    """The target is not allowed; permanent (an operator must fix the URL)."""


class InvalidTarget(ValueError):
    """The URL can't be requested at all (scheme, missing host)."""


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be called, or None when it is a global unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        if address.sixtofour is not None or address.teredo is not None:
            return "IPv6 tunnel address"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"  # includes 169.254.169.254 (cloud metadata)
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "carrier-grade NAT address"
    if address.is_private:
        return "private address"
    if address.is_reserved:
        return "reserved address"
    if not address.is_global:
        return "non-global address"
    return None


async def system_resolve(host: str, port: int) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(str(info[4][0]), int(info[0])) for info in infos]


class TargetGuard:
    """Checks URLs and remembers the vetted addresses of each host for a short while.

    ``allowed_targets`` is an explicit allow-list of ``(address, port)`` pairs that
    bypass the address policy (an internal partner; tests use it to stand in for a
    public host on loopback). ``enabled=False`` (POSTBACK_ALLOW_PRIVATE_TARGETS)
    keeps only the scheme check.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        resolve: Resolve | None = None,
        allowed_targets: Collection[tuple[str, int]] = (),
        cache_seconds: float = _RESOLVE_CACHE_SECONDS,
    ) -> None:
        self.enabled = enabled
        self._resolve = resolve or system_resolve
        self._allowed = frozenset((str(ipaddress.ip_address(a)), p) for a, p in allowed_targets)
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}

    def _check_address(self, host: str, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if (str(ip), port) in self._allowed:
            return
        reason = forbidden_reason(ip)
        if reason is not None:
            raise SSRFBlocked(f"{host} resolves to a {reason}")

    async def vet(self, url: URL) -> list[tuple[str, int]]:
        """Raise InvalidTarget/SSRFBlocked, or return the addresses it is safe to connect to."""
        if url.scheme not in ALLOWED_SCHEMES:
            raise InvalidTarget(f"scheme {url.scheme!r} is not allowed (http/https only)")
        host = url.raw_host
        if not host:
            raise InvalidTarget("URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        if not self.enabled:
            return []
        return await self.addresses(host, port)

    async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        literal = host.strip("[]")
        try:
            ip = ipaddress.ip_address(literal)
        except ValueError:
            ip = None
        if ip is not None:
            self._check_address(host, literal, port)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(literal, int(family))]
        key = (host.lower(), port)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            resolved = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise DNSFailure(f"cannot resolve {host}: {exc}") from exc
        if not resolved:
            raise DNSFailure(f"{host} has no addresses")
        for address, _family in resolved:
            # Refuse the host if ANY address is forbidden: a mix is a rebinding trick.
            self._check_address(host, address, port)
        self._cache[key] = (now + self._cache_seconds, resolved)
        return resolved


class DNSFailure(OSError):
    """The host could not be resolved (retryable)."""


class VettedResolver(AbstractResolver):
    """aiohttp resolver that only ever returns addresses the guard has vetted."""

    def __init__(self, guard: TargetGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for address, fam in await self._guard.addresses(host, port):
            entry: dict[str, Any] = {
                "hostname": host,
                "host": address,
                "port": port,
                "family": fam,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            results.append(entry)  # type: ignore[arg-type]
        return results

    async def close(self) -> None:
        return None
