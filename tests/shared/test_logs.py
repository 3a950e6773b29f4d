"""Structured logs: JSON lines with the request id, secrets never."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from postback_core.logs import (
    RequestIdMiddleware,
    configure_logging,
    configure_logging_from,
    delivery_context,
)
from postback_core.security import mask_secret
from postback_core.web import install_error_handlers
from tests.conftest import ADMIN_TOKEN
from tests.support.servers import serve_asgi

DB_PASSWORD = "db-password-s3cret"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    others = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "asyncio")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, other_level in others.items():
        logging.getLogger(name).setLevel(other_level)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_json_lines_carry_the_request_id_and_never_a_secret(
    database_url: str,
    amqp_url: str,
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = GatewaySettings(
        ENV="production",
        LOG_FORMAT="",  # the default outside dev: JSON
        LOG_LEVEL="DEBUG",
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
    )
    configure_logging_from(settings)
    for client_side in ("httpx", "httpcore", "asyncio"):  # this test's own client, not the app
        logging.getLogger(client_side).setLevel(logging.WARNING)
    app = create_app(settings)
    async with serve_asgi(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answered = await client.get(
            "/api/v1/publishers",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-Id": "req-from-lb-42"},
        )
        refused = await client.get(
            "/api/v1/conversions/s2s",
            params={"click_id": "1", "key": "adv_key_that_must_not_leak"},
            headers={"X-Request-Id": "bad id; with spaces"},
        )
        logging.getLogger("test").warning("admin token is %s", ADMIN_TOKEN)
    assert answered.status_code == 200
    assert answered.headers["x-request-id"] == "req-from-lb-42"
    assert refused.status_code in (401, 403)
    generated = refused.headers["x-request-id"]
    assert generated != "bad id; with spaces" and generated.isalnum()

    output = capsys.readouterr().err
    lines = _json_lines(output)
    by_request = {line.get("request_id"): line for line in lines if "request_id" in line}
    first = by_request["req-from-lb-42"]
    assert first["message"] == "GET /api/v1/publishers 200"
    assert first["level"] == "DEBUG" and first["logger"] == "postback_core.http"
    assert "duration_ms" in first and "ts" in first
    assert by_request[generated]["message"].startswith("GET /api/v1/conversions/s2s ")
    assert ADMIN_TOKEN not in output
    assert "adv_key_that_must_not_leak" not in output
    assert any(line["message"] == f"admin token is {mask_secret(ADMIN_TOKEN)}" for line in lines)


def test_delivery_ids_are_on_every_line_inside_the_context(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(
        "INFO",
        json=True,
        secrets_to_hide=[DB_PASSWORD],
    )
    log = logging.getLogger("postback_dispatcher.delivery")
    with delivery_context(42, "0b6b2f7e-0d4c-4a58-9f0c-6f1b3c1e9a10"):
        log.info("postback delivered", extra={"http_status": 200})
    log.info("connecting to postgresql://app:%s@db/postback", DB_PASSWORD)
    first, second = _json_lines(capsys.readouterr().err)
    assert first["conversion_id"] == 42
    assert first["event_id"] == "0b6b2f7e-0d4c-4a58-9f0c-6f1b3c1e9a10"
    assert first["http_status"] == 200
    assert "conversion_id" not in second  # the context ended
    assert second["message"] == "connecting to postgresql://app:****@db/postback"


def test_dev_logs_are_text_for_people(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = GatewaySettings(ENV="dev", ADMIN_TOKEN="x" * 20)
    assert not settings.log_json
    configure_logging_from(settings)
    with delivery_context(7, None):
        logging.getLogger("click_gateway").warning("hello")
    line = capsys.readouterr().err.strip()
    assert not line.startswith("{")
    assert line.endswith("WARNING click_gateway: hello [conversion_id=7]")


async def test_the_500_error_line_carries_the_request_id_and_ids_never_leak(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Starlette logs unhandled errors outside every middleware: the id must still be there."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        logging.getLogger("test.ok").warning("fine")
        return {"status": "ok"}

    configure_logging("INFO", json=True)
    for client_side in ("httpx", "httpcore"):
        logging.getLogger(client_side).setLevel(logging.WARNING)
    async with serve_asgi(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        failed = await client.get("/boom", headers={"X-Request-Id": "trace-500"})
        # Same connection (keep-alive) and a new one: each request gets its own id.
        same = await client.get("/ok")
        async with httpx.AsyncClient(base_url=base_url) as other:
            fresh = await other.get("/ok")
    assert failed.status_code == 500 and failed.json() == {"detail": "internal error"}
    lines = _json_lines(capsys.readouterr().err)
    (error,) = [line for line in lines if line["message"].startswith("unhandled error")]
    assert error["request_id"] == "trace-500" and "kaput" in str(error["exception"])
    oks = [line for line in lines if line["message"] == "fine"]
    assert [line["request_id"] for line in oks] == [
        same.headers["x-request-id"],
        fresh.headers["x-request-id"],
    ]
    assert len({"trace-500", *(line["request_id"] for line in oks)}) == 3
