"""One chaos run, start to finish: bring up, load, break, drain, judge, tear down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.chaos import report
from bench.chaos.cluster import RabbitCluster
from bench.chaos.common import Cleanup, pick_ports
from bench.chaos.faults import FaultInjector, Platform
from bench.chaos.load import Load, LoadStats, set_up
from bench.chaos.postgres import PostgresCluster
from bench.chaos.services import Service, dispatcher, gateway, migrate, receiver
from bench.common import ROOT

ADMIN_TOKEN = "chaos-admin-token-0123456789abcdef"
RETRY_DELAYS = (1, 2, 4, 8, 15)
FLUSH_INTERVAL_MS = 100
LOG_DIR = ROOT / "bench" / "results" / "chaos-logs"
DRAIN_POLL_SECONDS = 1.0
FAULT_WINDOW_SHARE = 0.8  # faults are spread over this share of the load's duration


@dataclass(frozen=True)
class ChaosConfig:
    mode: str
    conversions: int
    rate: float
    rounds: int  # how many times each fault is injected
    drain_timeout_s: float
    seed: int
    failover: bool


def config(mode: str, seed: int | None = None, **overrides: Any) -> ChaosConfig:
    """``light`` (CI, ~3 min) or ``full`` (~10 min); the seed is random unless given."""
    presets: dict[str, dict[str, Any]] = {
        "light": {"conversions": 1200, "rate": 14.0, "rounds": 1, "drain_timeout_s": 90.0},
        "full": {"conversions": 10_000, "rate": 25.0, "rounds": 2, "drain_timeout_s": 180.0},
    }
    values = {**presets[mode], **{k: v for k, v in overrides.items() if v is not None}}
    return ChaosConfig(
        mode=mode,
        seed=seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000),
        failover=os.environ.get("CHAOS_AMQP_FAILOVER", "0") == "1",
        **values,
    )


def service_env(
    cluster: RabbitCluster, pg: PostgresCluster, workdir: Path, failover: bool
) -> dict[str, str]:
    return {
        "ENV": "test",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "DATABASE_URL": pg.database_url,
        "AMQP_URL": cluster.amqp_url(failover),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "POSTBACK_ALLOW_PRIVATE_TARGETS": "true",
        "POSTBACK_RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
        "POSTBACK_TIMEOUT_SECONDS": "2",
        "POSTBACK_BREAKER_COOLDOWN_SECONDS": "5",
        "CLICK_FLUSH_INTERVAL_MS": str(FLUSH_INTERVAL_MS),
        "CLICK_SPILL_DIR": str(workdir / "click-spill"),
        "CACHE_REFRESH_SECONDS": "1",
        "DB_POOL_SIZE": "5",
        "GATEWAY_WORKERS": "1",
        "DISPATCHER_WORKERS": "1",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }


async def receiver_ids(rcv: Service) -> dict[str, list[float]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(rcv.base + "/__stats") as resp,
    ):
        stats: dict[str, Any] = await resp.json()
    return {k: list(v) for k, v in stats["ids"].items()}


async def drain(pg: PostgresCluster, accepted: set[int], timeout_s: float) -> bool:
    """Poll until every accepted conversion is final (or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            rows, unpublished = await report.database_state(pg.dsn)
        except Exception:  # the database may still be coming back: try again
            rows, unpublished = [], 1
        if report.settled(rows, accepted, unpublished):
            return True
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    return False


async def run_chaos(cfg: ChaosConfig) -> dict[str, Any]:
    started = time.monotonic()
    print(
        f"chaos run: mode={cfg.mode} seed={cfg.seed} conversions={cfg.conversions} "
        f"rate={cfg.rate}/s failover={cfg.failover}",
        flush=True,
    )
    cleanup = Cleanup()
    cleanup.install()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    cleanup.add("work directory", lambda: shutil.rmtree(workdir, ignore_errors=True))
    previous = LOG_DIR.with_name(LOG_DIR.name + "-previous")
    shutil.rmtree(previous, ignore_errors=True)
    if LOG_DIR.exists():
        LOG_DIR.rename(previous)
    suffix = uuid.uuid4().hex[:6]
    cluster = RabbitCluster(workdir, suffix)
    cluster_logs = workdir / "logs"

    def remove_cluster() -> None:
        with contextlib.suppress(OSError):
            shutil.copytree(cluster_logs, LOG_DIR / "rabbitmq", dirs_exist_ok=True)
        cluster.destroy()

    cleanup.add("RabbitMQ cluster", remove_cluster)
    pg = PostgresCluster(suffix)
    cleanup.add("PostgreSQL cluster", pg.drop)
    services: list[Service] = []

    def stop_services() -> None:
        """All at once: each may take its graceful-stop time (clicks are flushed)."""
        with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
            list(pool.map(lambda service: service.stop(), services))

    cleanup.add("services", stop_services)
    try:
        print("  starting a 3-node RabbitMQ cluster and a PostgreSQL cluster ...", flush=True)
        await asyncio.gather(cluster.start(), pg.create())
        env = service_env(cluster, pg, workdir, cfg.failover)
        await migrate(env, LOG_DIR)
        ports = pick_ports(5)
        rcv = receiver(ports[0], LOG_DIR)
        gateways = [gateway(f"gateway-{i + 1}", ports[1 + i], env, LOG_DIR) for i in range(2)]
        dispatchers = [
            dispatcher(f"dispatcher-{i + 1}", ports[3 + i], env, LOG_DIR) for i in range(2)
        ]
        services.extend([rcv, *gateways, *dispatchers])
        await asyncio.gather(*(s.start() for s in services))
        entities = await set_up(gateways, rcv, ADMIN_TOKEN)
        for service in services:
            service.supervise()
        setup_s = time.monotonic() - started
        print(f"  platform up after {setup_s:.0f}s; load and faults start", flush=True)

        stats = LoadStats()
        platform = Platform(
            cluster=cluster,
            postgres=pg,
            gateways=gateways,
            dispatchers=dispatchers,
            receiver=rcv,
            load=stats,
            flush_interval_s=FLUSH_INTERVAL_MS / 1000,
            log_dir=LOG_DIR,
        )
        t0 = time.monotonic()
        t0_wall = time.time()
        injector = FaultInjector(platform, random.Random(cfg.seed), t0)
        load = Load(gateways, entities, random.Random(cfg.seed + 1), stats)
        faults_running = asyncio.Event()
        faults_running.set()

        async def faults() -> None:
            try:
                window = cfg.conversions / cfg.rate * FAULT_WINDOW_SHARE
                await injector.run_schedule(window, cfg.rounds)
            finally:
                faults_running.clear()

        await asyncio.gather(load.run(cfg.conversions, cfg.rate, faults_running), faults())
        load_end_s = stats.ended_at - t0
        print(
            f"  [{load_end_s:6.1f}s] load done: {len(stats.accepted)} accepted; draining ...",
            flush=True,
        )
        drained = await drain(pg, stats.accepted, cfg.drain_timeout_s)
        drained_s = time.monotonic() - t0

        rows, unpublished = await report.database_state(pg.dsn)
        received = await receiver_ids(rcv)
        figures = report.promise_figures(
            rows, unpublished, stats.accepted, received, 1 + len(RETRY_DELAYS)
        )
        fault_dicts = [asdict(r) for r in injector.records]
        redirected = sorted(set(stats.clicks_redirected))
        found = await report.clicks_found(pg.dsn, redirected)
        figures.update(
            launched=stats.launched,
            accepted=len(stats.accepted),
            accepted_after_retry=stats.accepted_after_retry,
            accepted_as_repeat=stats.accepted_as_repeat,
            never_accepted=dict(stats.refused),
            clicks_failed=stats.clicks_failed,
            clicks_redirected=len(redirected),
            clicks_stored=found,
            clicks_lost=len(redirected) - found,
            clicks_at_risk=injector.clicks_at_risk,
            duplicate_bound=injector.duplicate_bound,
            drained=drained,
            drain_after_last_fault_s=round(drained_s - injector.last_fault_end, 1)
            if drained
            else None,
            drain_after_load_s=round(drained_s - load_end_s, 1) if drained else None,
            load_duration_s=round(load_end_s, 1),
            setup_s=round(setup_s, 1),
            late_launches=stats.late_launches,
            max_in_flight=stats.max_in_flight,
            outbox_republished=await report.outbox_republished(pg.dsn),
            duplicates_by_fault=report.duplicates_by_fault(received, fault_dicts, t0_wall),
            duplicates_timeline=report.repeats_timeline(received, t0_wall),
        )
        all_injected = {r.name for r in injector.records if r.injected}
        missing = sorted(set(injector.actions) - all_injected)
        failed = figures["lost"] > 0 or figures["attempts_over_limit"] > 0
        result: dict[str, Any] = {
            "mode": cfg.mode,
            "seed": cfg.seed,
            "rate": cfg.rate,
            "conversions": cfg.conversions,
            "failover": cfg.failover,
            "started_utc": report.utc_now(),
            "verdict": "FAIL" if failed else "PASS",
            "faults_not_injected": missing,
            "figures": figures,
            "faults": fault_dicts,
            "processes": [
                {"name": s.name, "starts": s.starts, "kills": s.kills, "crashes": s.crashes}
                for s in services
            ],
            "log_dir": str(LOG_DIR.relative_to(ROOT)),
        }
    finally:
        print("  tearing down ...", flush=True)
        for service in services:
            service.unsupervise()
        await asyncio.to_thread(cleanup.run_all)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result
