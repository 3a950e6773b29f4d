"""The light chaos run: every fault injected under load, and nothing lost or over the limit.

A three-node RabbitMQ cluster and a PostgreSQL cluster of its own, two gateways, two
dispatchers and a failing receiver (``bench.chaos``); ~1,200 conversions while the
work queue's leader node is stopped, the whole cluster is stopped for 10 s, PostgreSQL
restarts, a dispatcher, a gateway and the relaying gateway are killed with SIGKILL, and
the receiver answers 503 and then nothing. Needs root (RabbitMQ nodes run as the
rabbitmq user; pg_createcluster).
"""

from __future__ import annotations

import os
import shutil

import pytest

from bench.chaos import report
from bench.chaos.faults import ALL_FAULTS
from bench.chaos.run import config, run_chaos

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(
        os.geteuid() != 0
        or shutil.which("pg_createcluster") is None
        or not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"),
        reason="needs root, postgresql-common and rabbitmq-server",
    ),
]


async def test_light_chaos_run_loses_nothing_and_stays_within_the_attempt_limit() -> None:
    seed = int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None
    result = await run_chaos(config("light", seed=seed))
    report.write(result)
    figures = result["figures"]
    print(report.markdown(result))

    injected = {f["name"] for f in result["faults"] if f["injected"]}
    assert injected == set(ALL_FAULTS), f"seed {result['seed']}: not injected {result['faults']}"
    assert figures["accepted"] >= 0.8 * figures["launched"], f"seed {result['seed']}"
    assert figures["drained"], f"seed {result['seed']}: did not drain"
    assert figures["lost"] == 0, f"seed {result['seed']}: {figures['lost_detail']}"
    assert figures["attempts_over_limit"] == 0, (
        f"seed {result['seed']}: {figures['attempts_over_limit_detail']}"
    )
    # Every stored conversion (a superset of the accepted ones) is delivered or dead-lettered.
    assert figures["delivered"] + figures["dead_lettered"] == figures["conversions_stored"]
    assert figures["conversions_stored"] >= figures["accepted"]
