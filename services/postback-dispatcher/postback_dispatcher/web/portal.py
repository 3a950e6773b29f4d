"""The publisher's Postback Settings page (``/portal``), signed in with the API key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from postback_core.db.base import unit_of_work
from postback_core.enums import SessionKind
from postback_core.macros import MACROS, TemplateError
from postback_core.postback_settings import MAX_SECURITY_TOKEN_LENGTH
from postback_dispatcher.deps import Runtime
from postback_dispatcher.publisher_api import schemas as api_schemas
from postback_dispatcher.publisher_api import service
from postback_dispatcher.publisher_api.auth import publisher_for_key
from postback_dispatcher.publisher_api.repository import PublisherRepository
from postback_dispatcher.web import guide
from postback_dispatcher.web.publisher_repository import get_publisher
from postback_dispatcher.web.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    PRE_SESSION_COOKIE,
    csrf_ok,
    same_origin,
    store,
)
from postback_dispatcher.web.templating import login_form, templates

COOKIE = "pb_publisher"
RECENT_DELIVERIES = 15
REMOVE_TOKEN = "remove"  # noqa: S105  (the value of the "Remove the current token" checkbox)

router = APIRouter(prefix="/portal", include_in_schema=False)


@dataclass(frozen=True)
class PublisherSession:
    id: int
    name: str
    csrf: str


def _key_fingerprint(api_key_hash: str) -> str:
    return api_key_hash[:16]


async def _signed_in(request: Request, runtime: Runtime) -> PublisherSession | None:
    """The live server-side session of this cookie, while the publisher and key are current."""
    live = await store(request).current(request, COOKIE, SessionKind.PUBLISHER)
    if live is None or live.publisher_id is None or not live.publisher_active:
        return None
    if live.publisher_key_hash is None or not hmac.compare_digest(
        live.credential, _key_fingerprint(live.publisher_key_hash)
    ):
        return None  # the key was rotated: this session ends
    return PublisherSession(live.publisher_id, live.publisher_name or "", live.csrf_token)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/portal/login", status_code=303)


def _forbidden(message: str = "invalid or missing CSRF token; reload the page") -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=403)


@router.get("")
async def portal_home() -> RedirectResponse:
    return RedirectResponse("/portal/postback", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, runtime: Runtime) -> Response:
    if await _signed_in(request, runtime):
        return RedirectResponse("/portal/postback", status_code=303)
    return _login_form(request)


def _login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    return login_form(request, "portal_login.html", "portal", error, status)


@router.post("/login")
async def login(request: Request, runtime: Runtime) -> Response:
    form = await request.form()
    if not same_origin(request) or not csrf_ok(
        request.cookies.get(PRE_SESSION_COOKIE), str(form.get(CSRF_FIELD, ""))
    ):
        return _login_form(request, "Your sign-in form expired. Please try again.", 403)
    api_key = str(form.get("api_key", "")).strip()
    publisher = await publisher_for_key(request, runtime, api_key)
    if publisher is None:
        return _login_form(request, "That API key is not valid for an active publisher.", 401)
    async with unit_of_work(runtime.sessionmaker) as session:
        row = await get_publisher(session, publisher.id)
    if row is None:
        return _login_form(request, "That API key is not valid for an active publisher.", 401)
    response = RedirectResponse("/portal/postback", status_code=303)
    await store(request).start(
        request,
        response,
        COOKIE,
        kind=SessionKind.PUBLISHER,
        publisher_id=publisher.id,
        credential=_key_fingerprint(row.api_key_hash),
    )
    response.delete_cookie(PRE_SESSION_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request, runtime: Runtime) -> Response:
    me = await _signed_in(request, runtime)
    form = await request.form()
    if me is not None and not csrf_ok(me.csrf, str(form.get(CSRF_FIELD, ""))):
        return _forbidden()
    response = RedirectResponse("/portal/login", status_code=303)
    await store(request).end(request, response, COOKIE)
    return response


async def _render_settings(
    request: Request,
    runtime: Runtime,
    me: PublisherSession,
    *,
    form_template: str | None = None,
    form_error: str | None = None,
    unknown_macros: list[str] | None = None,
    notice: str | None = None,
    test_result: api_schemas.TestPostbackResult | None = None,
    status: int = 200,
) -> Response:
    async with unit_of_work(runtime.sessionmaker) as session:
        saved = await PublisherRepository(session).settings(me.id)
        deliveries = await service.recent_postbacks(
            session, me.id, api_schemas.PostbackAttemptQuery(limit=RECENT_DELIVERIES)
        )
    current = service.settings_view(me.id, saved)
    template_value = form_template if form_template is not None else current.url_template or ""
    saved_token = saved.security_token if saved else None
    preview = service.preview(me.id, template_value, saved_token) if template_value else None
    context: dict[str, Any] = {
        "area": "portal",
        "me": me,
        "csrf_token": me.csrf,
        "current": current,
        "template_value": template_value,
        "form_error": form_error,
        "unknown_macros": unknown_macros or [],
        "preview": preview,
        "notice": notice,
        "test_result": test_result,
        "macros": MACROS,
        "examples": guide.URL_EXAMPLES,
        "flow_steps": guide.FLOW_STEPS,
        "best_practices": guide.BEST_PRACTICES,
        "troubleshooting": guide.TROUBLESHOOTING,
        "deliveries": deliveries.items,
        "max_token_length": MAX_SECURITY_TOKEN_LENGTH,
    }
    return templates.TemplateResponse(request, "portal_settings.html", context, status_code=status)


@router.get("/postback", response_class=HTMLResponse)
async def settings_page(request: Request, runtime: Runtime) -> Response:
    me = await _signed_in(request, runtime)
    if me is None:
        return _to_login()
    notice = "Postback settings saved." if request.query_params.get("saved") else None
    return await _render_settings(request, runtime, me, notice=notice)


@router.post("/postback", response_class=HTMLResponse)
async def save_settings(request: Request, runtime: Runtime) -> Response:
    me = await _signed_in(request, runtime)
    if me is None:
        return _to_login()
    form = await request.form()
    if not same_origin(request) or not csrf_ok(me.csrf, str(form.get(CSRF_FIELD, ""))):
        return _forbidden()
    template = str(form.get("url_template", "")).strip()
    remove_token = form.get("token_action") == REMOVE_TOKEN
    new_token = str(form.get("security_token", "")).strip()
    keep = not remove_token and not new_token
    token = None if remove_token else (new_token or None)
    try:
        async with unit_of_work(runtime.sessionmaker) as session:
            await service.save_settings(session, me.id, template, token, keep_current_token=keep)
    except TemplateError as exc:
        return await _render_settings(
            request,
            runtime,
            me,
            form_template=template,
            form_error=str(exc),
            unknown_macros=list(exc.unknown_macros),
            status=422,
        )
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]) for e in exc.errors())
        return await _render_settings(
            request, runtime, me, form_template=template, form_error=message, status=422
        )
    return RedirectResponse("/portal/postback?saved=1#settings", status_code=303)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@router.post("/postback/preview")
async def preview(request: Request, runtime: Runtime) -> Response:
    """Live preview for the editor: validation and the URL with example values."""
    me = await _signed_in(request, runtime)
    if me is None:
        return JSONResponse({"detail": "signed out"}, status_code=401)
    if not csrf_ok(me.csrf, request.headers.get(CSRF_HEADER)):
        return _forbidden()
    body = await _json_body(request)
    template = str(body.get("url_template", ""))[:4096]
    token = str(body.get("security_token") or "").strip() or None
    if token is None and body.get("keep_token", True):
        async with unit_of_work(runtime.sessionmaker) as session:
            saved = await PublisherRepository(session).settings(me.id)
            token = saved.security_token if saved else None
    result = service.preview(me.id, template, token)
    return JSONResponse(result.model_dump(mode="json"))


@router.post("/postback/test")
async def send_test(request: Request, runtime: Runtime) -> Response:
    """The "Send test postback" button: JSON for the script, a page without JavaScript."""
    me = await _signed_in(request, runtime)
    if me is None:
        return _to_login()
    wants_page = "application/json" not in request.headers.get("content-type", "")
    if wants_page:
        form = await request.form()
        given = str(form.get(CSRF_FIELD, ""))
    else:
        given = request.headers.get(CSRF_HEADER, "")
    if not same_origin(request) or not csrf_ok(me.csrf, given):
        return _forbidden()
    limiter: service.TestRateLimit = request.app.state.test_rate_limit
    error: str | None = None
    result: api_schemas.TestPostbackResult | None = None
    try:
        limiter.check(me.id)
        async with unit_of_work(runtime.sessionmaker) as session:
            result = await service.send_test(
                session, runtime.sender, me.id, api_schemas.TestPostbackRequest()
            )
    except (service.TooManyTests, service.NoPostbackUrl, TemplateError) as exc:
        error = str(exc)
    if wants_page:
        return await _render_settings(
            request, runtime, me, test_result=result, form_error=None, notice=error
        )
    if result is None:
        return JSONResponse({"detail": error}, status_code=409)
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/postback/deliveries", response_class=HTMLResponse)
async def deliveries_fragment(request: Request, runtime: Runtime) -> Response:
    """The Recent deliveries table body, refreshed by the page after a test."""
    me = await _signed_in(request, runtime)
    if me is None:
        return JSONResponse({"detail": "signed out"}, status_code=401)
    async with unit_of_work(runtime.sessionmaker) as session:
        deliveries = await service.recent_postbacks(
            session, me.id, api_schemas.PostbackAttemptQuery(limit=RECENT_DELIVERIES)
        )
    return templates.TemplateResponse(request, "_deliveries.html", {"deliveries": deliveries.items})
