"""Schemathesis against both services' OpenAPI schemas, on loopback, real PostgreSQL/RabbitMQ.

Every check, a bounded number of examples per operation: zero server errors and
zero responses outside the documented schema. Credentials (admin token, an
advertiser key, a publisher key) go with every request; the dispatcher runs
with the SSRF guard on, so a fuzzed test-postback URL never reaches a real
network address.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from tests.factories import ADMIN_HEADERS, create_advertiser, create_publisher
from tests.postback_dispatcher.conftest import fresh_vhost, running_dispatcher
from tests.support.servers import serve_asgi

ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
SEED = os.environ.get("FUZZ_SEED", "20261201")


@dataclass
class Targets:
    gateway: str
    dispatcher: str
    advertiser_key: str
    publisher_key: str


@pytest.fixture(scope="module")
async def targets(database_url: str, amqp_url: str) -> AsyncIterator[Targets]:
    small_pools = {"DB_POOL_SIZE": 3}  # PostgreSQL is shared by every suite
    gateway = GatewaySettings(DATABASE_URL=database_url, AMQP_URL=amqp_url, **small_pools)
    async with (
        serve_asgi(create_app(gateway)) as gateway_url,
        fresh_vhost() as vhost,
        running_dispatcher(
            database_url, vhost, POSTBACK_ALLOW_PRIVATE_TARGETS=False, **small_pools
        ) as dispatcher,
    ):
        assert dispatcher.settings.postback_allow_private_targets is False
        async with httpx.AsyncClient(base_url=gateway_url) as client:
            advertiser = await create_advertiser(client)
            publisher = await create_publisher(client)
        yield Targets(gateway_url, dispatcher.base_url, advertiser["api_key"], publisher["api_key"])


@dataclass
class FuzzRun:
    returncode: int
    output: str
    cases: int
    failures: list[str]
    tool_errors: int  # schemathesis's own errors (e.g. a crash building one coverage case)


# Checks whose premise does not hold for a rule the schema can't express, narrowed (not
# dropped): business rules beyond the schema (an unknown macro in a template, an offer
# of an unknown advertiser, a smartlink with neither offers nor fallback) are a
# documented 422; a publisher created a moment ago has no postback settings yet (404).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]


[parameters]
"query.key" = "{advertiser_key}"
"""


async def fuzz(base_url: str, api_key: str, advertiser_key: str, workdir: Path) -> FuzzRun:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG.format(advertiser_key=advertiser_key))
    report = workdir / "events.ndjson"
    process = await asyncio.create_subprocess_exec(
        str(ST),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "ensure_resource_availability",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--generation-deterministic",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: {ADMIN_HEADERS['Authorization']}",
        "--header",
        f"X-Api-Key: {api_key}",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,  # schemathesis keeps a cache in its working directory
    )
    raw, _ = await asyncio.wait_for(process.communicate(), 600)
    output = raw.decode(errors="replace")
    cases, failures, tool_errors = 0, [], 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        tool_errors += "NonFatalError" in event
        recorder = event.get("ScenarioFinished", {}).get("recorder") or {}
        cases += len(recorder.get("cases", {}))
        for results in recorder.get("checks", {}).values():
            failures += [r["name"] for r in results if r.get("status") != "success"]
    return FuzzRun(process.returncode or 0, output, cases, failures, tool_errors)


@pytest.mark.parametrize("service", ["gateway", "dispatcher"])
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    targets: Targets, service: str, tmp_path: Path
) -> None:
    base, key = (
        (targets.gateway, targets.advertiser_key)
        if service == "gateway"
        else (targets.dispatcher, targets.publisher_key)
    )
    run = await fuzz(base, key, targets.advertiser_key, tmp_path)
    # The figures docs quote (pytest -s shows them).
    print(
        f"{service}: {run.cases} cases, {len(run.failures)} failed, {run.tool_errors} tool errors"
    )
    assert run.cases > 0, run.output[-8000:]
    assert not run.failures, run.output[-8000:]
