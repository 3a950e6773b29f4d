"""A realistic mix of visitors for the click path: user agents, client IPs, click ids.

The same mix drives ``wrk`` (through a generated Lua script) and the open-loop
generator, so both see the same distribution. Roughly: 55 % mobile (Android and
iPhone), 10 % tablet, 30 % desktop, 5 % crawlers; IPs from a dozen countries,
sent through ``X-Forwarded-For`` (the gateway trusts 127.0.0.1/32 in the bench).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

ANDROID = [
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.6312.99 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 12; Redmi Note 11) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.119 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 11; SM-A515F) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
]
IPHONE = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/122.0.6261.89 Mobile/15E148 Safari/604.1",
]
TABLET = [
    "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/121.0.6167.178 Safari/537.36",
]
DESKTOP = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
]
CRAWLERS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]

# 20 slots: 11 mobile, 2 tablet, 6 desktop, 1 crawler.
USER_AGENTS: list[str] = [
    *ANDROID,
    *ANDROID[:3],
    *IPHONE,
    *IPHONE[:1],
    *TABLET,
    *DESKTOP,
    *DESKTOP[:2],
    *CRAWLERS,
]

# Public addresses whose registry country is known (checked with iptocc).
CLIENT_IPS: list[str] = [
    "8.8.8.8",  # US
    "103.21.244.1",  # US
    "81.2.69.142",  # GB
    "212.58.224.1",  # GB
    "85.214.132.117",  # DE
    "90.84.0.1",  # FR
    "62.210.0.1",  # FR
    "24.48.0.1",  # CA
    "177.71.128.1",  # BR
    "200.147.0.1",  # BR
    "49.36.0.1",  # IN
    "110.136.0.1",  # ID
    "189.203.0.1",  # MX
    "133.0.0.1",  # JP
    "2.16.0.1",  # NL
    "41.58.0.1",  # NG
    "1.1.1.1",  # AU
    "2600:1700::1",  # US (IPv6)
    "2a00:1450:4001::1",  # IE (IPv6)
]


def click_headers() -> Iterator[tuple[str, str]]:
    """Endless (user agent, client IP) pairs; strides differ so pairs mix."""
    for n in itertools.count():
        yield USER_AGENTS[n % len(USER_AGENTS)], CLIENT_IPS[(n * 7) % len(CLIENT_IPS)]


def _lua_list(values: list[str]) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{\n" + ",\n".join(f'  "{v}"' for v in escaped) + "\n}"


def wrk_lua_script(path: str) -> str:
    """A wrk script: each request gets the next UA/IP pair and a unique external click id.

    ``done`` prints one ``WRKJSON`` line with exact counts and percentiles (µs).
    """
    return f"""
local uas = {_lua_list(USER_AGENTS)}
local ips = {_lua_list(CLIENT_IPS)}
local path = "{path}"
local threads = {{}}
local counter = 0
local tid = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  tid = wrk.thread:get("tid") or 0
end

function request()
  counter = counter + 1
  local headers = {{}}
  headers["User-Agent"] = uas[(counter % #uas) + 1]
  headers["X-Forwarded-For"] = ips[((counter * 7) % #ips) + 1]
  headers["Accept"] = "text/html"
  local url = path .. "?cid=w" .. tid .. "-" .. counter .. "&sub1=s" .. (counter % 10)
  return wrk.format("GET", url, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""
