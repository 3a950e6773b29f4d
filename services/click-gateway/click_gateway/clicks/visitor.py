"""Who clicked: client IP (proxy-aware), country, OS, device type and bot flag.

Everything here runs per click, so lookups are cached: parsed addresses and
User-Agent classifications live in bounded LRU caches (``functools.lru_cache``
is a C-implemented bounded LRU dict).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import iptocc
import is_crawler
from ua_parser import Domain, load_builtins

# The resolver lives in the shared package (both services limit by client address).
from postback_core.client_address import ClientAddressResolver

__all__ = ["ClientAddressResolver"]

USER_AGENT_CACHE_SIZE = 20_000
ADDRESS_CACHE_SIZE = 20_000
MAX_USER_AGENT_LENGTH = 512
MAX_OS_LENGTH = 50  # clicks.os is VARCHAR(50)

DESKTOP_OS = frozenset(
    {
        "windows",
        "mac os x",
        "linux",
        "ubuntu",
        "fedora",
        "debian",
        "chrome os",
        "freebsd",
        "openbsd",
        "netbsd",
        "solaris",
        "red hat",
        "suse",
        "mint",
        "arch linux",
        "gentoo",
        "mandriva",
        "centos",
        "kubuntu",
    }
)
MOBILE_OS = frozenset(
    {
        "ios",
        "android",
        "windows phone",
        "blackberry os",
        "symbian os",
        "firefox os",
        "kaios",
        "tizen",
        "harmonyos",
        "webos",
        "bada",
        "sailfish",
        "ubuntu touch",
    }
)
TABLET_MARKERS = ("ipad", "tablet", "kindle", "silk/", "playbook", "kfapwi", "nexus 7", "nexus 9")
TABLET_DEVICE_FAMILIES = ("generic_android_tablet", "ipad", "kindle")


class UserAgentInfo(NamedTuple):
    os: str | None  # the UA parser's family name, e.g. "Android", "iOS", "Windows"
    device: str  # desktop | mobile | tablet | other
    is_bot: bool


def _build_resolver() -> Any:
    """The Rust-backed resolver over the built-in regexes (~7 µs vs ~40 µs in pure Python).

    Built explicitly so the choice doesn't depend on which extras happen to be
    installed; falls back to the pure-Python one if the extension is missing.
    """
    matchers = load_builtins()
    try:
        from ua_parser.regex import Resolver

        return Resolver(matchers)
    except ImportError:  # pragma: no cover - ua-parser-rs is a pinned dependency
        from ua_parser import BasicResolver

        return BasicResolver(matchers)


_resolve = _build_resolver()
_DOMAINS = Domain.OS | Domain.DEVICE


def _device_type(ua: str, os_family: str | None, device_family: str | None, brand: str) -> str:
    lowered = ua.lower()
    os_key = (os_family or "").lower()
    family_key = (device_family or "").lower()
    if family_key == "spider":
        return "other"
    if family_key.startswith(TABLET_DEVICE_FAMILIES) or brand == "generic_android_tablet":
        return "tablet"
    if any(marker in lowered for marker in TABLET_MARKERS):
        return "tablet"
    if os_key == "android":
        # Android phones say "Mobile"; Android tablets don't.
        return "mobile" if "mobile" in lowered else "tablet"
    if os_key in MOBILE_OS or "mobile" in lowered or "iphone" in lowered:
        return "mobile"
    if os_key in DESKTOP_OS:
        return "desktop"
    return "other"


@lru_cache(maxsize=USER_AGENT_CACHE_SIZE)
def classify_user_agent(ua: str) -> UserAgentInfo:
    """OS family, device type and bot flag for a User-Agent string (cached)."""
    bot = is_crawler.is_crawler(ua)
    if not ua:
        return UserAgentInfo(None, "other", True)
    result = _resolve(ua, _DOMAINS)
    os_family = result.os.family[:MAX_OS_LENGTH] if result.os is not None else None
    if os_family == "Other":
        os_family = None
    device_family = result.device.family if result.device is not None else None
    brand = ((result.device.brand or "") if result.device is not None else "").lower()
    device = "other" if bot else _device_type(ua, os_family, device_family, brand)
    return UserAgentInfo(os_family, device, bot)


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def country_of(ip: str) -> str | None:
    """ISO-2 country from the registry data shipped inside ``iptocc``; None if unknown."""
    try:
        code = iptocc.country_code(ip)
    except (ValueError, TypeError):
        return None
    return code.upper() if code else None
