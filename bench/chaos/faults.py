"""The faults, and a seeded schedule that injects each of them under load.

Two lanes run side by side, each a shuffled sequence with random gaps: the
infrastructure lane (stop the work queue's leader node and bring it back; stop
the whole RabbitMQ cluster for 10 s; restart PostgreSQL) and the process lane
(``kill -9`` a dispatcher, a gateway, the gateway that is relaying the outbox;
the receiver answers 503 for 10 s, then not at all for 10 s). Within a lane,
faults never overlap; across lanes they may, as they would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.chaos.cluster import RabbitCluster
from bench.chaos.load import LoadStats
from bench.chaos.postgres import PostgresCluster
from bench.chaos.services import Service, metric
from postback_core.topology import WORK_QUEUE

CLUSTER_DOWN_SECONDS = 10.0
LEADER_DOWN_SECONDS = 5.0
RECEIVER_503_SECONDS = 10.0
RECEIVER_TIMEOUT_SECONDS = 10.0
RELAY_HUNT_SECONDS = 15.0
RELAY_HUNT_INTERVAL = 0.01
RELAY_APPLICATION_NAME = "click-gateway-outbox-relay"

INFRA_FAULTS = ("leader_node_stop", "cluster_stop", "postgres_restart")
PROCESS_FAULTS = ("kill_dispatcher", "kill_gateway", "kill_relay", "receiver_503_then_timeout")
ALL_FAULTS = INFRA_FAULTS + PROCESS_FAULTS
# Rough durations (s) used to spread a lane's faults over the load window.
ESTIMATES = {
    "leader_node_stop": 20.0,
    "cluster_stop": 40.0,
    "postgres_restart": 5.0,
    "kill_dispatcher": 5.0,
    "kill_gateway": 5.0,
    "kill_relay": 8.0,
    "receiver_503_then_timeout": 20.0,
}


@dataclass
class Platform:
    cluster: RabbitCluster
    postgres: PostgresCluster
    gateways: list[Service]
    dispatchers: list[Service]
    receiver: Service
    load: LoadStats
    flush_interval_s: float
    log_dir: Path


@dataclass
class FaultRecord:
    name: str
    lane: str
    started_s: float = 0.0  # since the load started
    ended_s: float = 0.0
    injected: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class FaultInjector:
    def __init__(self, platform: Platform, rng: random.Random, t0: float) -> None:
        self.p = platform
        self.rng = rng
        self.t0 = t0
        self.records: list[FaultRecord] = []
        self.duplicate_bound = 0  # sends in flight at each kill / database restart
        self.clicks_at_risk = 0  # clicks answered within one flush window before a gateway kill
        self.actions: dict[str, Callable[[FaultRecord], Awaitable[None]]] = {
            "leader_node_stop": self.leader_node_stop,
            "cluster_stop": self.cluster_stop,
            "postgres_restart": self.postgres_restart,
            "kill_dispatcher": self.kill_dispatcher,
            "kill_gateway": self.kill_gateway,
            "kill_relay": self.kill_relay,
            "receiver_503_then_timeout": self.receiver_fault,
        }

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def last_fault_end(self) -> float:
        return max((r.ended_s for r in self.records), default=0.0)

    # -- schedule ------------------------------------------------------------------

    async def run_schedule(self, window_s: float, rounds: int = 1) -> None:
        """Both lanes at once; every fault ``rounds`` times, spread over ``window_s``."""
        lanes = {"infra": list(INFRA_FAULTS) * rounds, "process": list(PROCESS_FAULTS) * rounds}
        await asyncio.gather(*(self._lane(name, f, window_s) for name, f in lanes.items()))

    async def _lane(self, lane: str, faults: list[str], window_s: float) -> None:
        self.rng.shuffle(faults)
        warm_up = 0.08 * window_s
        slack = max(0.0, window_s - warm_up - sum(ESTIMATES[f] for f in faults))
        cuts = sorted(self.rng.uniform(0, slack) for _ in faults)
        gaps = [b - a for a, b in zip([0.0, *cuts], cuts, strict=False)]
        await asyncio.sleep(warm_up)
        for fault, gap in zip(faults, gaps, strict=True):
            await asyncio.sleep(gap)
            await self.inject(fault, lane)

    async def inject(self, fault: str, lane: str = "manual") -> FaultRecord:
        record = FaultRecord(name=fault, lane=lane, started_s=self.now())
        self.records.append(record)
        print(f"  [{record.started_s:6.1f}s] fault {fault} ...", flush=True)
        try:
            await self.actions[fault](record)
            record.injected = True
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.ended_s = self.now()
        outcome = "done" if record.injected else f"FAILED ({record.error})"
        print(f"  [{record.ended_s:6.1f}s] fault {fault} {outcome} {record.details}", flush=True)
        return record

    # -- the faults ------------------------------------------------------------------

    async def leader_node_stop(self, record: FaultRecord) -> None:
        leader = await self.p.cluster.queue_leader(WORK_QUEUE)
        node = self.p.cluster.node(leader)
        record.details["leader"] = leader
        await self.p.cluster.stop_node(node)
        record.details["stopped_at_s"] = round(self.now(), 1)
        with contextlib.suppress(Exception):
            record.details["new_leader"] = await self.p.cluster.queue_leader(WORK_QUEUE)
        await asyncio.sleep(LEADER_DOWN_SECONDS)  # the outage itself
        await self.p.cluster.start_node(node)
        record.details["back_at_s"] = round(self.now(), 1)

    async def cluster_stop(self, record: FaultRecord) -> None:
        await self.p.cluster.stop_all()
        record.details["stopped_at_s"] = round(self.now(), 1)
        await asyncio.sleep(CLUSTER_DOWN_SECONDS)  # the outage itself
        await self.p.cluster.start_all()
        record.details["back_at_s"] = round(self.now(), 1)

    async def postgres_restart(self, record: FaultRecord) -> None:
        in_flight = await self._in_flight(self.p.dispatchers)
        record.details["dispatcher_sends_in_flight"] = in_flight
        self.duplicate_bound += in_flight
        await self.p.postgres.restart()

    async def kill_dispatcher(self, record: FaultRecord) -> None:
        victim = self.rng.choice(self.p.dispatchers)
        in_flight = await self._in_flight([victim])
        victim.kill9()
        record.details.update(victim=victim.name, sends_in_flight=in_flight)
        self.duplicate_bound += in_flight
        await self._back(victim, record)

    async def kill_gateway(self, record: FaultRecord) -> None:
        await self._kill_gateway(self.rng.choice(self.p.gateways), record)

    async def kill_relay(self, record: FaultRecord) -> None:
        """Kill the gateway whose relay holds a claimed outbox batch (caught mid-publish)."""
        victim, mid_batch = await self._find_relaying_gateway()
        record.details["caught_mid_batch"] = mid_batch
        await self._kill_gateway(victim, record)

    async def receiver_fault(self, record: FaultRecord) -> None:
        try:
            await self._receiver_mode("503")
            await asyncio.sleep(RECEIVER_503_SECONDS)  # the outage itself
            await self._receiver_mode("timeout")
            await asyncio.sleep(RECEIVER_TIMEOUT_SECONDS)
        finally:
            await self._receiver_mode("ok")

    # -- helpers ---------------------------------------------------------------------

    async def _kill_gateway(self, victim: Service, record: FaultRecord) -> None:
        window = self.p.flush_interval_s + 0.05
        now = time.monotonic()
        at_risk = sum(
            1
            for gw, t in list(self.p.load.click_answers.values())
            if gw == victim.name and now - t <= window
        )
        victim.kill9()
        self.clicks_at_risk += at_risk
        record.details.update(victim=victim.name, clicks_in_last_flush_window=at_risk)
        await self._back(victim, record)

    async def _back(self, victim: Service, record: FaultRecord) -> None:
        """The supervisor restarts it; wait until it answers again."""
        pid = victim.pid
        deadline = time.monotonic() + 120
        while victim.pid == pid or not await victim.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{victim.name} did not come back")
            await asyncio.sleep(0.2)
        record.details["back_after_s"] = round(self.now() - record.started_s, 1)

    async def _in_flight(self, dispatchers: list[Service]) -> int:
        values = await asyncio.gather(*(metric(d, "in_flight") for d in dispatchers))
        return int(sum(v for v in values if v is not None))

    async def _receiver_mode(self, mode: str) -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{self.p.receiver.base}/__mode/{mode}") as resp,
        ):
            resp.raise_for_status()

    async def _find_relaying_gateway(self) -> tuple[Service, bool]:
        """Poll pg_stat_activity for a relay connection inside a transaction, map its client
        port to the gateway process that owns the socket. Falls back to a gateway with a
        relay connection (idle) if none is caught mid-batch in time."""
        conn = await asyncpg.connect(self.p.postgres.dsn, timeout=5)
        try:
            deadline = time.monotonic() + RELAY_HUNT_SECONDS
            idle_owner: Service | None = None
            while time.monotonic() < deadline:
                rows = await conn.fetch(
                    "SELECT client_port, state FROM pg_stat_activity WHERE application_name = $1",
                    RELAY_APPLICATION_NAME,
                )
                for row in rows:
                    owner = self._owner_of_port(row["client_port"])
                    if owner is None:
                        continue
                    if row["state"] in ("active", "idle in transaction"):
                        return owner, True
                    idle_owner = idle_owner or owner
                await asyncio.sleep(RELAY_HUNT_INTERVAL)
        finally:
            await conn.close()
        return idle_owner or self.rng.choice(self.p.gateways), False

    def _owner_of_port(self, port: int | None) -> Service | None:
        if port is None:
            return None
        inode = _socket_inode(port)
        if inode is None:
            return None
        for gw in self.p.gateways:
            if gw.alive() and gw.pid is not None and _owns_socket(gw.pid, inode):
                return gw
        return None


def _socket_inode(local_port: int) -> str | None:
    """Inode of the TCP socket whose local port is ``local_port`` (from /proc/net/tcp)."""
    wanted = f":{local_port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[1].endswith(wanted):
                return parts[9]
    return None


def _owns_socket(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if fd.readlink().as_posix() == target:
                    return True
    return False
