"""Plumbing every benchmark shares: throw-away infrastructure, subprocesses, machine facts.

Each benchmark gets its own PostgreSQL database and RabbitMQ vhost (unique names)
and removes them afterwards, so benchmarks never see each other's rows or queues.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg

from postback_core.db.base import asyncpg_dsn, prepare_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOG_DIR = ROOT / "bench" / "results" / "logs"

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql+asyncpg://postgres@127.0.0.1:5432")
AMQP_SERVER = os.environ.get("BENCH_AMQP_SERVER", "amqp://guest:guest@127.0.0.1:5672")
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"

T = TypeVar("T")


class Skipped(Exception):
    """A benchmark (or part of one) that cannot run yet; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_T0 = time.monotonic()


def say(message: str) -> None:
    """A progress line with the time since the current benchmark started."""
    print(f"    [{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def reset_clock() -> None:
    global _T0
    _T0 = time.monotonic()


# --- infrastructure -----------------------------------------------------------


@dataclass
class Infra:
    database_url: str
    amqp_url: str
    vhost: str

    @property
    def dsn(self) -> str:
        return asyncpg_dsn(self.database_url)


def _rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([exe, "-q", *args], check=True, capture_output=True, timeout=60)


async def _create_vhost(name: str) -> None:
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", name)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")


async def _drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(asyncpg_dsn(f"{PG_SERVER}/postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def infrastructure(prefix: str) -> AsyncIterator[Infra]:
    """A fresh migrated database and a fresh vhost; both removed on exit, whatever happens."""
    db_name = unique_name(f"bench_{prefix}")
    vhost = unique_name(f"bench-{prefix}").replace("_", "-")
    database_url = f"{PG_SERVER}/{db_name}"
    amqp_url = f"{AMQP_SERVER}/{quote(vhost, safe='')}"
    try:
        await asyncio.gather(prepare_database(database_url), _create_vhost(vhost))
        say(f"database {db_name} and vhost {vhost} ready")
        yield Infra(database_url=database_url, amqp_url=amqp_url, vhost=vhost)
    finally:
        say("dropping database and vhost")
        results = await asyncio.gather(
            _drop_database(database_url),
            asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                print(f"  cleanup warning: {result!r}", file=sys.stderr)


# --- subprocesses ---------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: Any = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful: the gateway flushes clicks), then SIGKILL after ``timeout``."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Proc.stop
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=ROOT,
        start_new_session=True,
    )
    return Proc(name=name, popen=popen, log_path=log_path, _log=log)


@asynccontextmanager
async def running(proc: Proc) -> AsyncIterator[Proc]:
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


def service_env(infra: Infra, **extra: str | int | float) -> dict[str, str]:
    env = {
        "ENV": "dev",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "DATABASE_URL": infra.database_url,
        "AMQP_URL": infra.amqp_url,
        "LOG_LEVEL": "WARNING",
        "HOST": "127.0.0.1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


async def wait_until(
    check: Callable[[], Awaitable[T | None]],
    timeout: float,
    interval: float = 0.05,
    proc: Proc | None = None,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; fail fast if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError, asyncio.TimeoutError):
            result = await check()
            if result:
                return result
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        await asyncio.sleep(interval)


async def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """Status of a GET without following redirects (small helper for readiness checks)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=3)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers, allow_redirects=False) as resp,
    ):
        await resp.read()
        return resp.status


async def wait_http_ok(url: str, proc: Proc, timeout: float = 30.0) -> None:
    async def ok() -> bool:
        return await http_status(url) == 200

    await wait_until(ok, timeout, interval=0.1, proc=proc, what=url)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS from /proc; psutil is not installed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- machine facts -------------------------------------------------------------------


def _command_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip()


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in (
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "fastapi",
        "aiohttp",
        "httpx",
        "aio-pika",
        "asyncpg",
        "sqlalchemy",
    ):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    wrk = _command_output(["wrk", "-v"]).splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": wrk[0].split(" Copyright")[0] if wrk else "unknown",
        "postgresql": _command_output(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"]
        ),
        "rabbitmq": _command_output(["rabbitmqctl", "-q", "version"]),
        "loadavg_at_start": loadavg(),
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


# --- results -----------------------------------------------------------------------


@dataclass
class Result:
    """What one benchmark measured; filled in as it goes so a late skip keeps early figures."""

    key: str
    title: str
    status: str = "ok"  # ok | skipped | error
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    skipped_parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def target(
        self, name: str, measured: float | None, op: str, threshold: float, unit: str = ""
    ) -> None:
        passed: bool | None
        if measured is None or measured != measured:  # missing or NaN
            passed = None
        elif op == ">=":
            passed = measured >= threshold
        else:
            passed = measured <= threshold
        self.targets.append(
            {
                "name": name,
                "measured": measured,
                "op": op,
                "threshold": threshold,
                "unit": unit,
                "passed": passed,
            }
        )

    def skip_part(self, part: str, reason: str) -> None:
        self.skipped_parts.append(f"{part}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "elapsed_s": round(self.elapsed_s, 1),
            "figures": self.figures,
            "targets": self.targets,
            "skipped_parts": self.skipped_parts,
            "notes": self.notes,
        }


@asynccontextmanager
async def pg_activity(dsn: str, into: dict[str, Any], interval: float = 0.1) -> AsyncIterator[None]:
    """Sample pg_stat_activity of the benchmark's database while the block runs.

    Records how often each (state, wait event) was seen, the peak number of
    backends, and how many distinct backend pids appeared (far more pids than
    the pool size means connections are being opened and closed under load).
    """
    conn = await asyncpg.connect(dsn)
    seen: dict[str, int] = {}
    pids: set[int] = set()
    lock_waits: dict[str, int] = {}
    peak = 0
    samples = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            waits = await conn.fetch(
                "SELECT locktype, mode, classid::regclass::text AS class, objid "
                "FROM pg_locks WHERE NOT granted"
            )
            for w in waits:
                key = f"{w['locktype']}:{w['mode']}:{w['class']}:{w['objid']}"
                lock_waits[key] = lock_waits.get(key, 0) + 1
            samples += 1
            peak = max(peak, len(rows))
            for row in rows:
                pids.add(row["pid"])
                key = f"{row['state']}:{row['wait_event_type'] or '-'}:{row['wait_event'] or '-'}"
                seen[key] = seen.get(key, 0) + 1
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        stop.set()
        with suppress(Exception):
            await task
        await conn.close()
        into.update(
            {
                "samples": samples,
                "peak_backends": peak,
                "distinct_backend_pids": len(pids),
                "state_wait_counts": dict(sorted(seen.items(), key=lambda kv: -kv[1])[:12]),
                # Ungranted locks (server-wide): "object:AccessExclusiveLock:pg_database:0"
                # is the lock every NOTIFYing transaction takes for its commit.
                "lock_waits": dict(sorted(lock_waits.items(), key=lambda kv: -kv[1])[:8]),
            }
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat).

    CPU per request is far steadier than requests per second on a shared
    machine: other processes take wall time from us, not CPU time.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    command: str
    cpu_s: float  # user + system so far


def live_processes() -> Iterator[ProcStat]:
    """Every live process from ``/proc/<pid>/stat`` (ones that exit meanwhile are skipped)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        yield ProcStat(
            pid=int(entry.name),
            ppid=int(fields[1]),
            command=stat[stat.index("(") + 1 : stat.rindex(")")],
            cpu_s=(int(fields[11]) + int(fields[12])) / ticks_per_s,
        )


def cpu_by_command() -> dict[str, float]:
    """CPU seconds used so far by every live process, summed per command name.

    Two snapshots around a run say where the whole machine's CPU went (our
    services, PostgreSQL backends, RabbitMQ, the load generator) — on a 2-core
    box shared by all of them, that is what bounds end-to-end figures.
    """
    totals: dict[str, float] = {}
    for proc in live_processes():
        totals[proc.command] = totals.get(proc.command, 0.0) + proc.cpu_s
    return totals


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    return (total - idle) / ticks_per_s, total / ticks_per_s


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (services may run worker processes)."""
    children: dict[int, list[int]] = {}
    for proc in live_processes():
        children.setdefault(proc.ppid, []).append(proc.pid)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _tree_sum(pid: int, measure: Callable[[int], float]) -> float:
    """``measure`` summed over ``pid`` and its live descendants (one may exit meanwhile)."""
    total = 0.0
    for member in process_tree(pid):
        with suppress(OSError, IndexError, RuntimeError):
            total += measure(member)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and its live descendants."""
    return _tree_sum(pid, cpu_seconds)


def tree_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` and its live descendants, in KiB."""
    return int(_tree_sum(pid, rss_kib))


def dirty_kib() -> int:
    """Page cache waiting to be written to disk (``Dirty`` + ``Writeback``, /proc/meminfo)."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Dirty", "Writeback"):
            total += int(rest.split()[0])
    return total


async def wait_for_written_back(
    dsn: str, max_dirty_kib: int = 32 * 1024, timeout: float = 30.0
) -> dict[str, Any]:
    """CHECKPOINT, then wait until the kernel has written back what a load phase left.

    A saturating phase leaves hundreds of MB of WAL and table pages dirty; the
    kernel writes them back over the next seconds with CPU of its own, which a
    latency phase started at once would count against the server. Returns what
    was waited for (the deadline is a cap: the measurement still runs).
    """
    import asyncpg

    started = time.monotonic()
    before = dirty_kib()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    while dirty_kib() > max_dirty_kib and time.monotonic() - started < timeout:
        await asyncio.sleep(0.1)
    return {
        "dirty_kib_before": before,
        "dirty_kib_after": dirty_kib(),
        "waited_s": round(time.monotonic() - started, 2),
    }


def broker_cpu_seconds() -> float:
    """CPU seconds used so far by the RabbitMQ node (``beam.smp``) on this machine."""
    return sum(p.cpu_s for p in live_processes() if p.command == "beam.smp")


async def wait_for_quiet_machine(
    window_s: float = 0.5, max_share: float = 0.1, timeout: float = 30.0
) -> float:
    """Wait until the whole machine is under ``max_share`` busy over ``window_s``.

    What one run leaves behind — RabbitMQ writing a large publish to its
    segment files, autovacuum on the tables the run filled, the kernel writing
    back their pages — takes CPU for seconds afterwards; a measurement started
    at once would charge it to whatever runs next. Returns the seconds waited
    (the deadline is a cap, not an error: the figure is still taken, and the
    wait is recorded beside it).
    """
    started = time.monotonic()
    while True:
        busy, total = machine_busy_seconds()
        await asyncio.sleep(window_s)
        busy_after, total_after = machine_busy_seconds()
        share = (busy_after - busy) / max(total_after - total, 1e-9)
        waited = time.monotonic() - started
        if share < max_share or waited >= timeout:
            return round(waited, 2)


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests while we wanted them (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_by_pid() -> dict[int, float]:
    return {p.pid: p.cpu_s for p in live_processes() if p.command == "postgres"}


class CpuAccount:
    """Where the machine's CPU went between ``start()`` and ``stop(units)``.

    With ``pg_dsn``, PostgreSQL's share is split by the ``application_name`` of
    each backend (gateway conversions, click lookups, outbox relay, dispatcher)
    or by background process (walwriter, autovacuum, ...).
    """

    def __init__(self, pg_dsn: str | None = None) -> None:
        self.pg_dsn = pg_dsn

    def start(self) -> None:
        self._before = cpu_by_command()
        self._busy_before = machine_busy_seconds()
        self._steal_before = machine_steal_seconds()
        self._pg_before = postgres_cpu_by_pid()

    async def postgres_by_application(self, units: int) -> dict[str, float]:
        """Call right after ``stop``; backends that exited meanwhile are not counted."""
        if self.pg_dsn is None:
            return {}
        import asyncpg

        after = postgres_cpu_by_pid()
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid, coalesce(nullif(application_name, ''), backend_type) AS name "
                "FROM pg_stat_activity"
            )
        finally:
            await conn.close()
        names = {row["pid"]: row["name"] for row in rows}
        totals: dict[str, float] = {}
        for pid, seconds in after.items():
            used = seconds - self._pg_before.get(pid, 0.0)
            if used > 0:
                name = names.get(pid, "other postgres processes")
                totals[name] = totals.get(name, 0.0) + used
        ranked = sorted(totals.items(), key=lambda kv: -kv[1])
        return {name: round(seconds / units * 1e6, 1) for name, seconds in ranked}

    def stop(self, units: int, wall_s: float, top: int = 8) -> dict[str, Any]:
        after = cpu_by_command()
        busy, total = machine_busy_seconds()
        used = {
            name: seconds - self._before.get(name, 0.0)
            for name, seconds in after.items()
            if seconds - self._before.get(name, 0.0) > 0
        }
        ranked = sorted(used.items(), key=lambda kv: -kv[1])[:top]
        busy_s = busy - self._busy_before[0]
        all_s = total - self._busy_before[1]
        return {
            "machine_busy_share": round(busy_s / all_s, 3) if all_s else None,
            "cores_busy": round(busy_s / wall_s, 2) if wall_s else None,
            # Time stolen by the hypervisor: a noisy neighbour, not our code.
            "steal_share": round((machine_steal_seconds() - self._steal_before) / all_s, 3)
            if all_s
            else None,
            "cpu_us_per_unit_by_command": {
                name: round(seconds / units * 1e6, 1) for name, seconds in ranked
            },
            "cpu_us_per_unit_machine": round(busy_s / units * 1e6, 1) if units else None,
        }


async def drop_outbox_notify_if_asked(infra: Any, result: Result) -> None:
    """Experiment switch BENCH_WITHOUT_OUTBOX_NOTIFY=1 (not a product setting).

    Drops the outbox NOTIFY trigger in the benchmark's database before the
    services start: the gateway's relay is then woken only in-process (after
    its own commits) and by its poll.
    """
    if not (
        os.environ.get("BENCH_WITHOUT_OUTBOX_NOTIFY") or os.environ.get("BENCH_P4_WITHOUT_NOTIFY")
    ):
        return
    import asyncpg

    conn = await asyncpg.connect(infra.dsn)
    try:
        await conn.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    finally:
        await conn.close()
    result.notes.append("EXPERIMENT: outbox_notify trigger dropped for this run")
    result.figures["experiment"] = "outbox_notify trigger dropped"
