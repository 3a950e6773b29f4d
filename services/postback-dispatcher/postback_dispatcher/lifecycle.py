"""Let a feature close what it opened when the app stops, without touching app.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI


def on_app_shutdown(app: FastAPI, close: Callable[[], Awaitable[None]]) -> None:
    """Run ``close`` after the app's own lifespan has finished."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        try:
            async with inner(asgi_app) as state:
                yield state
        finally:
            await close()

    app.router.lifespan_context = lifespan
