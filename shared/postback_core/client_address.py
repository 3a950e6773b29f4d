"""The client's IP address: the socket peer, or X-Forwarded-For behind trusted proxies.

Shared because both services need the same answer: the gateway records it
per click, and both limit failed authentication per client address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ADDRESS_CACHE_SIZE = 20_000


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddressResolver:
    """The visitor's IP: the socket peer, or X-Forwarded-For behind trusted proxies."""

    def __init__(self, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.trusted_proxies = tuple(trusted_proxies)
        # Peers and hops repeat a lot (a load balancer has a handful of addresses).
        self._is_trusted = lru_cache(maxsize=ADDRESS_CACHE_SIZE)(self._check_trusted)

    def _check_trusted(self, text: str) -> bool:
        address = _parse_address(text)
        if address is None:
            return False
        return any(address in network for network in self.trusted_proxies)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """Walk X-Forwarded-For right to left past trusted proxies; first untrusted hop wins.

        The header is only believed when the socket peer itself is a trusted
        proxy; otherwise anyone could claim any address.
        """
        if peer is None:
            return None
        if not forwarded_for or not self.trusted_proxies or not self._is_trusted(peer):
            return self._normalise(peer)
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            if _parse_address(hop) is None:
                break  # garbage: don't trust anything left of it
            client = hop
            if not self._is_trusted(hop):
                break
        return self._normalise(client)

    @staticmethod
    @lru_cache(maxsize=ADDRESS_CACHE_SIZE)
    def _normalise(text: str) -> str | None:
        address = _parse_address(text)
        return None if address is None else str(address)
