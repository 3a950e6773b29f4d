"""The calls the consumer reports through: counted by class and reason, one log line each."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from postback_core.enums import AttemptOutcome, DeadLetterReason, StatusClass
from postback_core.logs import configure_logging, delivery_context
from postback_core.metrics import MetricsPump
from postback_dispatcher import metrics
from postback_dispatcher.metrics import (
    ATTEMPTS,
    REGISTRY,
    observe_attempt,
    observe_dead_letter,
    observe_delivered,
    status_class,
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "2xx"), (204, "2xx"), (302, "3xx"), (429, "4xx"), (503, "5xx"), (None, "none"),
     (0, "none"), (999, "none"), (-1, "none")],
)  # fmt: skip
def test_status_classes_are_a_closed_set(status: int | None, expected: str) -> None:
    assert status_class(status) == StatusClass(expected)


def test_attempts_are_counted_by_outcome_class_and_reason_and_logged_once(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json=True)
    pump = MetricsPump(
        [
            metrics.ATTEMPT_TALLY.flush,
            metrics.DEAD_LETTER_TALLY.flush,
            metrics.ATTEMPT_DURATION_LOCAL.flush,
            metrics.DELIVERY_LATENCY_LOCAL.flush,
        ],
        name="test",
    )
    pump.flush()
    delivered = {"outcome": "delivered", "status_class": "2xx", "reason": "none"}
    dead = {"outcome": "dead", "status_class": "4xx", "reason": "permanent_http_4xx"}
    before = (
        _value("postback_attempts_total", **delivered),
        _value("postback_attempts_total", **dead),
    )
    durations_before = _value("postback_attempt_duration_seconds_count")
    latency_before = _value("postback_delivery_latency_seconds_count")
    dead_letters_before = _value("postback_dead_lettered_total", reason="permanent_http_4xx")

    with delivery_context(77, "5b1c1c64-4d7e-4a31-8c55-0e9a2b7c3d10"):
        observe_attempt(
            AttemptOutcome.DELIVERED,
            http_status=200,
            duration_seconds=0.042,
            conversion_id=77,
            attempt_no=1,
            url_masked="https://tracker.example/pb?token=***",
        )
    observe_attempt(
        AttemptOutcome.DEAD,
        http_status=404,
        duration_seconds=0.01,
        reason=DeadLetterReason.PERMANENT_HTTP_4XX,
        conversion_id=78,
    )
    observe_delivered(3.5)
    observe_dead_letter(DeadLetterReason.PERMANENT_HTTP_4XX)
    assert _value("postback_attempts_total", **delivered) == before[0]  # not until the pump
    pump.flush()

    assert _value("postback_attempts_total", **delivered) == before[0] + 1
    assert _value("postback_attempts_total", **dead) == before[1] + 1
    assert _value("postback_attempt_duration_seconds_count") == durations_before + 2
    assert _value("postback_delivery_latency_seconds_count") == latency_before + 1
    assert (
        _value("postback_dead_lettered_total", reason="permanent_http_4xx")
        == dead_letters_before + 1
    )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["outcome"] for line in lines] == ["delivered", "dead"]
    first = lines[0]
    assert first["logger"] == "postback_dispatcher.delivery" and first["level"] == "INFO"
    assert first["event_id"] == "5b1c1c64-4d7e-4a31-8c55-0e9a2b7c3d10"
    assert first["conversion_id"] == 77 and first["http_status"] == 200
    assert first["duration_ms"] == 42.0 and first["url"].endswith("token=***")
    assert lines[1]["reason"] == "permanent_http_4xx" and lines[1]["status_class"] == "4xx"
    assert ATTEMPTS._labelnames == ("outcome", "status_class", "reason")
