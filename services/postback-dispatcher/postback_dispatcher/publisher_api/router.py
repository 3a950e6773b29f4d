"""``/api/v1/me/...``: a publisher's own postback settings, test sends and attempt log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from postback_core.macros import TemplateError
from postback_dispatcher.deps import Runtime, Session
from postback_dispatcher.pagination import CursorError
from postback_dispatcher.publisher_api import schemas, service
from postback_dispatcher.publisher_api.auth import Me

router = APIRouter(prefix="/api/v1/me", tags=["publisher"])


def install(app: FastAPI) -> None:
    app.state.test_rate_limit = service.TestRateLimit()
    app.include_router(router)


def template_refused(exc: TemplateError) -> JSONResponse:
    """422 naming each unknown macro, so a typo such as {payot} is pointed at."""
    return JSONResponse(
        {"detail": str(exc), "unknown_macros": list(exc.unknown_macros)}, status_code=422
    )


@router.get("/postback", response_model=schemas.MyPostbackSettings)
async def get_my_postback(me: Me, session: Session) -> schemas.MyPostbackSettings:
    """Your postback URL template and (masked) security token."""
    return await service.get_settings(session, me.id)


@router.put(
    "/postback",
    response_model=schemas.MyPostbackSettings,
    responses={422: {"description": "invalid template; unknown_macros names the typos"}},
)
async def put_my_postback(
    body: schemas.MyPostbackSettingsUpdate, me: Me, session: Session
) -> schemas.MyPostbackSettings | JSONResponse:
    """Save your template (validated like the operators' endpoint) and token."""
    try:
        return await service.save_settings(
            session,
            me.id,
            body.url_template,
            body.security_token,
            keep_current_token="security_token" not in body.model_fields_set,
        )
    except TemplateError as exc:
        return template_refused(exc)


@router.post("/postback/preview", response_model=schemas.PreviewResult)
async def preview_my_postback(body: schemas.TemplateCheck, me: Me) -> schemas.PreviewResult:
    """Check a template and render it with the guide's example values (nothing is saved)."""
    return service.preview(me.id, body.url_template, body.security_token)


@router.post(
    "/postback/test",
    response_model=schemas.TestPostbackResult,
    responses={
        409: {"description": "no template saved or supplied"},
        422: {"description": "invalid template"},
        429: {"description": "too many tests"},
    },
)
async def test_my_postback(
    me: Me,
    session: Session,
    runtime: Runtime,
    request: Request,
    body: schemas.TestPostbackRequest | None = None,
) -> schemas.TestPostbackResult | JSONResponse:
    """Fire one real postback with example values (``X-Postback-Test: 1``) and report it."""
    limiter: service.TestRateLimit = request.app.state.test_rate_limit
    try:
        limiter.check(me.id)
        return await service.send_test(
            session, runtime.sender, me.id, body or schemas.TestPostbackRequest()
        )
    except service.TooManyTests as exc:
        raise HTTPException(429, detail=str(exc), headers={"Retry-After": "60"}) from exc
    except service.NoPostbackUrl as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except TemplateError as exc:
        return template_refused(exc)


@router.get("/postbacks", response_model=schemas.PostbackAttemptPage)
async def my_postbacks(
    me: Me,
    session: Session,
    query: Annotated[schemas.PostbackAttemptQuery, Query()],
) -> schemas.PostbackAttemptPage:
    """Your recent postback attempts, newest first (tests included)."""
    try:
        return await service.recent_postbacks(session, me.id, query)
    except CursorError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
