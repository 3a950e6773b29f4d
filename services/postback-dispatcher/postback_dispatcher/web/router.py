"""Mount the pages and their static files on the dispatcher app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from postback_dispatcher.web import operator, portal
from postback_dispatcher.web.sessions import SessionStore, session_secret
from postback_dispatcher.web.templating import WEB_DIR


def install(app: FastAPI) -> None:
    settings = app.state.runtime.settings
    app.state.session_store = SessionStore(
        app.state.runtime.sessionmaker,
        session_secret(settings.session_secret, settings.admin_token),
        settings.trusted_proxies,
    )
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")
    app.include_router(portal.router)
    app.include_router(operator.router)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/portal/postback", status_code=303)

    @app.get("/admin", include_in_schema=False)
    async def admin_home() -> RedirectResponse:
        """The README's address for the operator pages."""
        return RedirectResponse("/operator/dead-letters", status_code=303)
