"""The platform's processes under a small supervisor: two gateways, two dispatchers, a receiver.

Each service keeps its port across restarts (clients and the load know where to
go). The supervisor restarts a process that is gone, after a short pause, like
systemd or Kubernetes would: after our own ``kill -9`` and after any crash (which
is counted: a crash nobody caused is a finding).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import ROOT

BIN = Path(sys.executable).parent
RESTART_PAUSE_SECONDS = 2.0
HEALTH_TIMEOUT_SECONDS = 90.0
SUPERVISE_INTERVAL_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 20.0


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_dir: Path
    health_path: str = "/healthz"
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    kills: int = 0  # exits we caused (kill -9)
    crashes: int = 0  # exits nobody asked for
    _expected_exit: bool = field(default=False, repr=False)
    _supervisor: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed below
        try:
            log.write(f"\n--- start {self.starts + 1} at {time.time():.3f} ---\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                cwd=ROOT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.starts += 1
        self._expected_exit = False

    async def healthy(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.base + self.health_path) as resp,
            ):
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not await self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy after {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def start(self) -> None:
        self.spawn()
        await self.wait_healthy()

    def kill9(self) -> None:
        """``kill -9`` the whole process group; the supervisor starts it again."""
        if self.popen is None:
            return
        self._expected_exit = True
        self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def supervise(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
            if self.popen is None or self.popen.poll() is None:
                continue
            if not self._expected_exit:
                self.crashes += 1
            await asyncio.sleep(RESTART_PAUSE_SECONDS)
            self.spawn()

    def unsupervise(self) -> None:
        """No more restarts (call in the event loop, before ``stop``)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None

    def stop(self) -> None:
        """SIGTERM (graceful: buffered clicks are flushed), SIGKILL if it hangs. Synchronous;
        the supervisor must be off already (``unsupervise``)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self._expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def gateway(name: str, port: int, env: dict[str, str], log_dir: Path) -> Service:
    argv = [str(BIN / "click-gateway"), "serve", "--no-migrate", "--port", str(port)]
    return Service(name, [*argv, "--workers", "1"], env, port, log_dir)


def dispatcher(name: str, port: int, env: dict[str, str], log_dir: Path) -> Service:
    argv = [str(BIN / "postback-dispatcher"), "serve", "--port", str(port)]
    return Service(name, argv, {**env, "DISPATCHER_WORKERS": "1"}, port, log_dir)


def receiver(port: int, log_dir: Path) -> Service:
    argv = [str(BIN / "python"), "-m", "bench.chaos.receiver", "--port", str(port)]
    return Service("receiver", argv, {}, port, log_dir, health_path="/__stats")


async def migrate(env: dict[str, str], log_dir: Path) -> None:
    """``click-gateway migrate``: schema and queue topology (run once the cluster formed)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "migrate.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "click-gateway"),
            "migrate",
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=ROOT,
        )
        code = await asyncio.wait_for(proc.wait(), 180)
    if code != 0:
        raise RuntimeError(f"click-gateway migrate exited {code}; see {log_dir / 'migrate.log'}")


async def metric(service: Service, name: str) -> float | None:
    """One value from a dispatcher's /metrics (None if it does not answer)."""
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(service.base + "/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == f"postback_dispatcher_{name}":
            with contextlib.suppress(ValueError):
                return float(value)
    return None
