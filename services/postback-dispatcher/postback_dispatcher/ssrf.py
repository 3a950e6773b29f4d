"""SSRF guard: a postback may only reach public addresses.

Publishers choose their postback URL, so without a guard anyone could make the
dispatcher call internal services or the cloud metadata endpoint. The guard
resolves the host itself and refuses any non-global address; the sender's
client then connects only to the addresses vetted here (``TargetGuard.addresses``
is its resolver), so there is no window for DNS rebinding between the check
and the connection. Every redirect hop is vetted again.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable, Collection

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> list of (address, family); injectable for tests.
Resolve = Callable[[str, int], Awaitable[list[tuple[str, int]]]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
# No host name contains these: control characters, space, URL delimiters, escapes.
_BAD_HOST_CHARACTER = re.compile(r"[\x00-\x20\x7f-\x9f\"#%/<>?@\[\\\]^`{|}]")
_RESOLVE_CACHE_SECONDS = 30.0
# Hosts remembered at once: a URL template can put a new host name in every postback.
_RESOLVE_CACHE_HOSTS = 4096

# Addresses a postback may never reach: the IANA IPv4 and IPv6 special-purpose
# address registries, plus multicast and (IPv6) everything outside the global
# unicast space. The guard uses this table, not ``ipaddress``'s ``is_private``/
# ``is_global``, whose answers are incomplete and change between Python versions
# (``192.0.0.8`` is "global" on 3.11). The few single addresses the registries
# mark globally reachable inside a blocked range are exempt; otherwise the first
# matching range gives the reason.
_GLOBALLY_REACHABLE_EXCEPTIONS = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "192.0.0.9",  # Port Control Protocol anycast (RFC 7723)
        "192.0.0.10",  # TURN anycast (RFC 8155)
        "2001:1::1",  # Port Control Protocol anycast (RFC 7723)
        "2001:1::2",  # TURN anycast (RFC 8155)
        "2001:1::3",  # DNS-SD service registration protocol anycast (RFC 9665)
    )
)
_SPECIAL_PURPOSE_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        # IPv4
        ("0.0.0.0/8", "'this network' address"),  # RFC 791; 0.0.0.0 reaches the local host
        ("10.0.0.0/8", "private address"),  # RFC 1918
        ("100.64.0.0/10", "carrier-grade NAT address"),  # RFC 6598, shared address space
        ("127.0.0.0/8", "loopback address"),  # RFC 1122
        ("169.254.0.0/16", "link-local address"),  # RFC 3927; 169.254.169.254 is cloud metadata
        ("172.16.0.0/12", "private address"),  # RFC 1918
        ("192.0.0.0/24", "IETF protocol assignment"),  # RFC 6890; DS-Lite, NAT64 discovery...
        ("192.0.2.0/24", "documentation address"),  # RFC 5737, TEST-NET-1
        ("192.31.196.0/24", "AS112 sink address"),  # RFC 7535, reverse-DNS sink
        ("192.52.193.0/24", "AMT relay address"),  # RFC 7450, multicast tunnelling
        ("192.88.99.0/24", "6to4 relay anycast address"),  # RFC 7526, deprecated
        ("192.168.0.0/16", "private address"),  # RFC 1918
        ("192.175.48.0/24", "AS112 sink address"),  # RFC 7534, direct delegation
        ("198.18.0.0/15", "benchmarking address"),  # RFC 2544
        ("198.51.100.0/24", "documentation address"),  # RFC 5737, TEST-NET-2
        ("203.0.113.0/24", "documentation address"),  # RFC 5737, TEST-NET-3
        ("224.0.0.0/4", "multicast address"),  # RFC 5771
        ("255.255.255.255/32", "broadcast address"),  # RFC 919, limited broadcast
        ("240.0.0.0/4", "reserved address"),  # RFC 1112, class E
        # IPv6
        ("::/128", "unspecified address"),  # RFC 4291
        ("::1/128", "loopback address"),  # RFC 4291
        ("::ffff:0:0/96", "IPv4-mapped IPv6 address"),  # RFC 4291; would reach the IPv4 host
        ("64:ff9b::/96", "NAT64 address"),  # RFC 6052; translated to any IPv4 address
        ("64:ff9b:1::/48", "local-use NAT64 address"),  # RFC 8215
        ("100::/64", "discard-only address"),  # RFC 6666
        ("2001::/32", "IPv6 tunnel address"),  # RFC 4380, Teredo (embeds an IPv4 address)
        ("2001::/23", "IETF protocol assignment"),  # RFC 2928; benchmarking, ORCHID, AMT...
        ("2001:db8::/32", "documentation address"),  # RFC 3849
        ("2002::/16", "IPv6 tunnel address"),  # RFC 3056, 6to4 (embeds an IPv4 address)
        ("2620:4f:8000::/48", "AS112 sink address"),  # RFC 7534, direct delegation
        ("3fff::/20", "documentation address"),  # RFC 9637
        ("5f00::/16", "segment-routing address"),  # RFC 9602, SRv6 SIDs
        ("fc00::/7", "unique-local address"),  # RFC 4193, the IPv6 private range
        ("fe80::/10", "link-local address"),  # RFC 4291
        ("fec0::/10", "site-local address"),  # RFC 3879, deprecated
        ("ff00::/8", "multicast address"),  # RFC 4291
    )
)
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")  # RFC 4291: the rest is unassigned


class SSRFBlocked(OSError):
    """The target is not allowed; permanent (an operator must fix the URL)."""


class InvalidTarget(ValueError):
    """The URL can't be requested at all (scheme, missing host)."""


@functools.lru_cache(maxsize=4096)
def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be called, or None when it is globally reachable."""
    if address in _GLOBALLY_REACHABLE_EXCEPTIONS:
        return None
    for network, reason in _SPECIAL_PURPOSE_RANGES:
        if address.version == network.version and address in network:
            return reason
    if address.version == 6 and address not in _IPV6_GLOBAL_UNICAST:
        return "unassigned IPv6 address"
    return None


@functools.lru_cache(maxsize=4096)
def _host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's raw host) can't be a host name or an IPv6 literal, or None."""
    if ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r}"
        return None
    if _BAD_HOST_CHARACTER.search(host):
        return f"invalid character in the host {host!r}"
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
        cache_hosts: int = _RESOLVE_CACHE_HOSTS,
    ) -> None:
        self.enabled = enabled
        self._resolve = resolve or system_resolve
        self._allowed = frozenset((str(ipaddress.ip_address(a)), p) for a, p in allowed_targets)
        self._cache_seconds = cache_seconds
        self._cache_hosts = cache_hosts
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}

    def _check_address(self, host: str, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if (str(ip), port) in self._allowed:
            return
        reason = forbidden_reason(ip)
        if reason is not None:
            where = host if host.strip("[]") == address else f"{host} resolves to {address}"
            raise SSRFBlocked(f"{where}: {reason}, not a public address")

    async def vet(self, url: URL, *, resolve_seconds: float | None = None) -> list[tuple[str, int]]:
        """Raise InvalidTarget/SSRFBlocked, or return the addresses it is safe to connect to.

        A lookup that takes longer than ``resolve_seconds`` is a DNSFailure.
        """
        if url.scheme not in ALLOWED_SCHEMES:
            raise InvalidTarget(f"scheme {url.scheme!r} is not allowed (http/https only)")
        host = url.raw_host
        if not host:
            raise InvalidTarget("URL has no host")
        problem = _host_problem(host)
        if problem is not None:
            raise InvalidTarget(problem)
        port = url.port or (443 if url.scheme == "https" else 80)
        if url.explicit_port == 0:
            raise InvalidTarget("port 0 can't be requested")
        if not self.enabled:
            return []
        return await self.addresses(host, port, resolve_seconds=resolve_seconds)

    async def addresses(
        self, host: str, port: int, *, resolve_seconds: float | None = None
    ) -> list[tuple[str, int]]:
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
            async with asyncio.timeout(resolve_seconds):
                resolved = await self._resolve(host, port)
        except TimeoutError as exc:
            raise DNSFailure(f"no DNS answer for {host} in {resolve_seconds:.2g}s") from exc
        except (OSError, UnicodeError) as exc:
            raise DNSFailure(f"cannot resolve {host}: {exc}") from exc
        if not resolved:
            raise DNSFailure(f"{host} has no addresses")
        for address, _family in resolved:
            # Refuse the host if ANY address is forbidden: a mix is a rebinding trick.
            self._check_address(host, address, port)
        if len(self._cache) >= self._cache_hosts:
            self._shrink_cache(now)
        self._cache[key] = (now + self._cache_seconds, resolved)
        return resolved

    def _shrink_cache(self, now: float) -> None:
        """Forget expired hosts, and the older half if that is not enough (amortised O(1))."""
        fresh = [(key, entry) for key, entry in self._cache.items() if entry[0] > now]
        if len(fresh) >= self._cache_hosts // 2:
            fresh = fresh[len(fresh) - self._cache_hosts // 2 :]
        self._cache = dict(fresh)


class DNSFailure(OSError):
    """The host could not be resolved (retryable)."""
