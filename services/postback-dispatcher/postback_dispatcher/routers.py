"""Feature routers and pages mounted on the dispatcher's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI


def include_feature_routers(app: FastAPI) -> None:
    from postback_dispatcher.dead_letters import router as dead_letters
    from postback_dispatcher.publisher_api import router as publisher_api
    from postback_dispatcher.web import router as web

    dead_letters.install(app)
    publisher_api.install(app)
    web.install(app)
