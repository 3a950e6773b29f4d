"""The operators' Dead letters pages (``/operator``), signed in with the admin token."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from postback_core.db.base import unit_of_work
from postback_core.enums import DeadLetterReason, SessionKind
from postback_core.security import secrets_equal
from postback_dispatcher.dead_letters import schemas as dl_schemas
from postback_dispatcher.dead_letters import service as dl_service
from postback_dispatcher.dead_letters.router import replay_publisher
from postback_dispatcher.deps import Runtime
from postback_dispatcher.pagination import CursorError
from postback_dispatcher.web.sessions import (
    CSRF_FIELD,
    PRE_SESSION_COOKIE,
    csrf_ok,
    fingerprint,
    same_origin,
    store,
)
from postback_dispatcher.web.templating import login_form, templates

COOKIE = "pb_operator"
PAGE_SIZE = 25
FILTER_FIELDS = ("publisher_id", "offer_id", "reason", "last_status", "since", "until")
REASONS = tuple(reason.value for reason in DeadLetterReason)

router = APIRouter(prefix="/operator", include_in_schema=False)


def _admin_fingerprint(request: Request, runtime: Runtime) -> str:
    return fingerprint(store(request).secret, runtime.settings.admin_token)


async def _operator_csrf(request: Request, runtime: Runtime) -> str | None:
    """The live session's CSRF token when signed in with the current admin token, else None."""
    live = await store(request).current(request, COOKIE, SessionKind.OPERATOR)
    if live is None or not secrets_equal(live.credential, _admin_fingerprint(request, runtime)):
        return None
    return live.csrf_token


def _to_login() -> RedirectResponse:
    return RedirectResponse("/operator/login", status_code=303)


def _forbidden() -> JSONResponse:
    return JSONResponse({"detail": "invalid or missing CSRF token; reload the page"}, 403)


def _filter_values(source: Any) -> dict[str, str]:
    return {k: str(source.get(k)).strip() for k in FILTER_FIELDS if source.get(k)}


def _parse_filters(values: dict[str, str]) -> tuple[dl_schemas.DeadLetterFilterFields, str | None]:
    try:
        return dl_schemas.DeadLetterFilterFields.model_validate(values), None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return dl_schemas.DeadLetterFilterFields(), f"Filters ignored: {problems}"


@router.get("")
async def operator_home() -> RedirectResponse:
    return RedirectResponse("/operator/dead-letters", status_code=303)


def _login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    return login_form(request, "operator_login.html", "operator", error, status)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, runtime: Runtime) -> Response:
    if await _operator_csrf(request, runtime):
        return RedirectResponse("/operator/dead-letters", status_code=303)
    return _login_form(request)


@router.post("/login")
async def login(request: Request, runtime: Runtime) -> Response:
    form = await request.form()
    if not same_origin(request) or not csrf_ok(
        request.cookies.get(PRE_SESSION_COOKIE), str(form.get(CSRF_FIELD, ""))
    ):
        return _login_form(request, "Your sign-in form expired. Please try again.", 403)
    if not secrets_equal(str(form.get("admin_token", "")).strip(), runtime.settings.admin_token):
        return _login_form(request, "That admin token is not valid.", 401)
    response = RedirectResponse("/operator/dead-letters", status_code=303)
    await store(request).start(
        request,
        response,
        COOKIE,
        kind=SessionKind.OPERATOR,
        credential=_admin_fingerprint(request, runtime),
    )
    response.delete_cookie(PRE_SESSION_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request, runtime: Runtime) -> Response:
    csrf = await _operator_csrf(request, runtime)
    form = await request.form()
    if csrf is not None and not csrf_ok(csrf, str(form.get(CSRF_FIELD, ""))):
        return _forbidden()
    response = RedirectResponse("/operator/login", status_code=303)
    await store(request).end(request, response, COOKIE)
    return response


NOTICES = {
    "replayed": "Dead letter #{id} replayed: it is on its way through the normal pipeline.",
    "purged": "Dead letter #{id} purged.",
    "bulk-replayed": "{count} dead letter(s) replayed.",
    "bulk-purged": "{count} dead letter(s) purged.",
}


def _notice(request: Request) -> str | None:
    template = NOTICES.get(request.query_params.get("done", ""))
    if template is None:
        return None
    try:
        return template.format(
            id=int(request.query_params.get("id", "0")),
            count=int(request.query_params.get("count", "0")),
        )
    except ValueError:
        return None


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters_page(request: Request, runtime: Runtime) -> Response:
    csrf = await _operator_csrf(request, runtime)
    if csrf is None:
        return _to_login()
    values = _filter_values(request.query_params)
    filters, filter_error = _parse_filters(values)
    cursor = request.query_params.get("cursor") or None
    async with unit_of_work(runtime.sessionmaker) as session:
        try:
            page = await dl_service.list_page(
                session, filters.to_filters(), limit=PAGE_SIZE, cursor=cursor
            )
        except CursorError:
            page = await dl_service.list_page(
                session, filters.to_filters(), limit=PAGE_SIZE, cursor=None
            )
        stats = await dl_service.stats(session)
        totals = await dl_service.dry_run_totals(
            session, filters.to_filters(), replayable_only=False
        )
    next_url = (
        "/operator/dead-letters?" + urlencode(values | {"cursor": page.next_cursor})
        if page.next_cursor
        else None
    )
    context = {
        "area": "operator",
        "csrf_token": csrf,
        "items": page.items,
        "stats": stats,
        "totals": totals,
        "filters": values,
        "filter_query": urlencode(values),
        "filter_error": filter_error,
        "reasons": REASONS,
        "next_url": next_url,
        "is_first_page": cursor is None,
        "notice": _notice(request),
        "error": request.query_params.get("error"),
    }
    return templates.TemplateResponse(
        request, "operator_dead_letters.html", context, status_code=422 if filter_error else 200
    )


@router.get("/dead-letters/{dead_letter_id}", response_class=HTMLResponse)
async def dead_letter_page(dead_letter_id: int, request: Request, runtime: Runtime) -> Response:
    csrf = await _operator_csrf(request, runtime)
    if csrf is None:
        return _to_login()
    async with unit_of_work(runtime.sessionmaker) as session:
        try:
            item = await dl_service.get_detail(session, dead_letter_id)
        except dl_service.DeadLetterNotFound:
            item = None
    if item is None:
        return templates.TemplateResponse(
            request,
            "operator_not_found.html",
            {"area": "operator", "csrf_token": csrf, "dead_letter_id": dead_letter_id},
            status_code=404,
        )
    return templates.TemplateResponse(
        request,
        "operator_dead_letter.html",
        {
            "area": "operator",
            "csrf_token": csrf,
            "item": item,
            "back_query": request.query_params.get("back", ""),
        },
    )


def _back_to_list(back: str, **params: object) -> RedirectResponse:
    query = "&".join(p for p in (back, urlencode(params)) if p)
    return RedirectResponse(f"/operator/dead-letters?{query}", status_code=303)


async def _checked_form(request: Request, runtime: Runtime) -> dict[str, str] | Response:
    csrf = await _operator_csrf(request, runtime)
    if csrf is None:
        return _to_login()
    form = await request.form()
    if not same_origin(request) or not csrf_ok(csrf, str(form.get(CSRF_FIELD, ""))):
        return _forbidden()
    return {k: str(v) for k, v in form.items()}


def _safe_back(value: str) -> str:
    """Only our own filter query string goes back into the redirect."""
    from urllib.parse import parse_qsl

    pairs = [(k, v) for k, v in parse_qsl(value) if k in FILTER_FIELDS]
    return urlencode(pairs)


@router.post("/dead-letters/{dead_letter_id}/replay")
async def replay(dead_letter_id: int, request: Request, runtime: Runtime) -> Response:
    form = await _checked_form(request, runtime)
    if isinstance(form, Response):
        return form
    back = _safe_back(form.get("back", ""))
    try:
        await dl_service.replay_one(runtime.sessionmaker, replay_publisher(request), dead_letter_id)
    except dl_service.DeadLetterNotFound:
        return _back_to_list(back, error=f"Dead letter #{dead_letter_id} does not exist.")
    except dl_service.DeadLetterConflict as exc:
        return _back_to_list(back, error=f"#{dead_letter_id} not replayed: {exc}.")
    except dl_service.BrokerUnavailable:
        return _back_to_list(
            back, error="The broker is unavailable; nothing was replayed. Try again shortly."
        )
    return _back_to_list(back, done="replayed", id=dead_letter_id)


@router.post("/dead-letters/{dead_letter_id}/purge")
async def purge(dead_letter_id: int, request: Request, runtime: Runtime) -> Response:
    form = await _checked_form(request, runtime)
    if isinstance(form, Response):
        return form
    back = _safe_back(form.get("back", ""))
    try:
        async with unit_of_work(runtime.sessionmaker) as session:
            await dl_service.purge_one(session, dead_letter_id)
    except dl_service.DeadLetterNotFound:
        return _back_to_list(back, error=f"Dead letter #{dead_letter_id} does not exist.")
    except dl_service.DeadLetterConflict as exc:
        return _back_to_list(back, error=f"#{dead_letter_id} not purged: {exc}.")
    return _back_to_list(back, done="purged", id=dead_letter_id)


@router.post("/dead-letters/bulk", response_class=HTMLResponse)
async def bulk(request: Request, runtime: Runtime) -> Response:
    """Bulk replay or purge: first a dry-run count to confirm, then the real run."""
    form = await _checked_form(request, runtime)
    if isinstance(form, Response):
        return form
    action = form.get("action", "replay")
    if action not in ("replay", "purge"):
        return JSONResponse({"detail": "action must be replay or purge"}, status_code=422)
    values = _filter_values(form)
    filters, filter_error = _parse_filters(values)
    if filter_error:
        return _back_to_list(urlencode(values), error=filter_error)
    if form.get("step") != "run":
        async with unit_of_work(runtime.sessionmaker) as session:
            totals = await dl_service.dry_run_totals(
                session, filters.to_filters(), replayable_only=action == "replay"
            )
        return templates.TemplateResponse(
            request,
            "operator_bulk_confirm.html",
            {
                "area": "operator",
                "csrf_token": await _operator_csrf(request, runtime),
                "action": action,
                "totals": totals,
                "filters": values,
                "filter_query": urlencode(values),
            },
        )
    back = urlencode(values)
    if action == "purge":
        async with unit_of_work(runtime.sessionmaker) as session:
            count = await dl_service.purge_matching(session, filters.to_filters())
        return _back_to_list(back, done="bulk-purged", count=count)
    try:
        expected = int(form.get("expected_count", "0"))
    except ValueError:
        expected = 0
    if expected <= 0:
        return _back_to_list(back, error="Nothing was confirmed, so nothing was replayed.")
    # At most what the operator saw in the dry run, even if more dead-lettered since.
    outcome = await dl_service.replay_matching(
        runtime.sessionmaker, replay_publisher(request), filters.to_filters(), limit=expected
    )
    if outcome.failed:
        return _back_to_list(
            back,
            error=(
                f"Broker unavailable: {outcome.replayed} replayed, {outcome.failed} still listed."
            ),
        )
    return _back_to_list(back, done="bulk-replayed", count=outcome.replayed)


def payout_share(value: Decimal, total: Decimal) -> int:
    """Bar width (percent) of a publisher's payout at risk in the stats panel."""
    if total <= 0:
        return 0
    return max(2, int(value * 100 / total))


templates.env.globals["payout_share"] = payout_share
