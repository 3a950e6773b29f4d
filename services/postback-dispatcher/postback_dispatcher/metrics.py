"""Delivery counters in the Prometheus text format (breaker trips included)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from postback_dispatcher.deps import Runtime

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(runtime: Runtime) -> str:
    snapshot = runtime.consumer.snapshot()
    lines: list[str] = []
    for name, value in snapshot.items():
        if isinstance(value, int | float):
            lines.append(f"postback_dispatcher_{name} {value}")
    for host in snapshot.get("breaker_open_hosts", []):
        lines.append(f'postback_dispatcher_breaker_open{{host="{host}"}} 1')
    return "\n".join(lines) + "\n"
