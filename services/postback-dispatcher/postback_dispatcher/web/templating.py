"""The Jinja2 environment of the pages, with formatting filters."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from postback_dispatcher.web.sessions import PRE_SESSION_COOKIE, new_csrf_token

WEB_DIR = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))


def money(value: Decimal | str | None) -> str:
    if value is None or value == "":
        return "—"
    return f"${Decimal(value):,.2f}"


def when(value: datetime | str | None) -> str:
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def short_when(value: datetime | str | None) -> str:
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%b %d, %H:%M:%S")


def latency(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


templates.env.filters["money"] = money
templates.env.filters["when"] = when
templates.env.filters["short_when"] = short_when
templates.env.filters["latency"] = latency


def login_form(
    request: Request, template: str, area: str, error: str | None = None, status: int = 200
) -> Response:
    """A sign-in page with a fresh CSRF token, also set in a short-lived pre-session cookie."""
    token = new_csrf_token()
    response = templates.TemplateResponse(
        request, template, {"csrf_token": token, "error": error, "area": area}, status_code=status
    )
    response.set_cookie(
        PRE_SESSION_COOKIE, token, httponly=True, samesite="lax", max_age=3600, path="/"
    )
    return response
