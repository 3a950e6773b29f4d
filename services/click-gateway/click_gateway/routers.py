"""Feature routers mounted on the gateway's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI


def include_feature_routers(api: FastAPI) -> None:
    """Each feature folder contributes one router (admin, conversions)."""
    return None
