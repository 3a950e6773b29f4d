"""Plumbing the chaos run shares: ports, commands, and a clean-up that always runs.

Everything the run starts (RabbitMQ nodes, a PostgreSQL cluster, services) registers
an undo step here. The steps run in reverse order at the end of the run, on an
exception, on Ctrl-C or SIGTERM, and (last resort) at interpreter exit, so a broken
run never leaves a node or a cluster behind.
"""

from __future__ import annotations

import asyncio
import atexit
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType

# High range, away from the shared services (5432, 5672, 25672, 4369) and the
# kernel's ephemeral range (32768-60999), so a port we picked is not handed out
# to an outgoing connection meanwhile.
PORT_RANGE = (20_000, 32_000)
PORT_PICK_TRIES = 200


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct free loopback ports, chosen at random in ``PORT_RANGE``."""
    chooser = rng or random.Random()
    chosen: list[int] = []
    for _ in range(PORT_PICK_TRIES):
        port = chooser.randint(*PORT_RANGE)
        if port not in chosen and port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"found only {len(chosen)} free ports of {count} in {PORT_RANGE}")


def run(argv: list[str], timeout: float = 120.0, check: bool = True) -> str:
    """Run a command, return its stdout; a failure raises with the command's stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


async def arun(argv: list[str], timeout: float = 120.0, check: bool = True) -> str:
    return await asyncio.to_thread(run, argv, timeout, check)


async def port_accepts(port: int, timeout: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class Cleanup:
    """Undo steps, run once each, newest first, whatever ends the run."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._installed = False

    def add(self, name: str, step: Callable[[], None]) -> None:
        with self._lock:
            self._steps.append((name, step))

    def install(self) -> None:
        """atexit plus SIGTERM/SIGHUP turned into KeyboardInterrupt (so ``finally`` runs)."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.run_all)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, _interrupt)

    def run_all(self) -> None:
        while True:
            with self._lock:
                if not self._steps:
                    return
                name, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                print(f"  chaos cleanup: {name} failed: {exc}", file=sys.stderr, flush=True)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
