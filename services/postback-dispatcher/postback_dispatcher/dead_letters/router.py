"""``/api/v1/dead-letters``: the operators' dead-letter API (admin bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from postback_core.web import PathId
from postback_dispatcher.dead_letters import schemas, service
from postback_dispatcher.dead_letters.publisher import ReplayPublisher
from postback_dispatcher.deps import AdminOnly, Runtime, Session
from postback_dispatcher.lifecycle import on_app_shutdown
from postback_dispatcher.pagination import CursorError

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"], dependencies=[AdminOnly])


def install(app: FastAPI) -> None:
    """Mount the API and give the app the broker publisher replays go through."""
    runtime = app.state.runtime
    publisher = ReplayPublisher(
        runtime.settings.amqp_url,
        runtime.settings.postback_retry_delays,
        shared=getattr(runtime, "publisher", None),
    )
    app.state.replay_publisher = publisher
    on_app_shutdown(app, publisher.close)
    app.include_router(router)


def replay_publisher(request: Request) -> ReplayPublisher:
    publisher: ReplayPublisher = request.app.state.replay_publisher
    return publisher


def _not_found(dead_letter_id: int) -> HTTPException:
    return HTTPException(404, detail=f"dead letter {dead_letter_id} not found")


def _broker_down(exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"replay not sent, the dead letter stays listed: {exc}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@router.get("", response_model=schemas.DeadLetterPage)
async def list_dead_letters(
    session: Session, query: Annotated[schemas.DeadLetterListQuery, Query()]
) -> schemas.DeadLetterPage:
    """Open dead letters, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    try:
        return await service.list_page(
            session, query.to_filters(), limit=query.limit, cursor=query.cursor
        )
    except CursorError as exc:
        raise HTTPException(422, detail=str(exc)) from exc


@router.get("/stats", response_model=schemas.DeadLetterStats)
async def dead_letter_stats(session: Session) -> schemas.DeadLetterStats:
    """Count and payout at risk per publisher, the longest-waiting publisher first."""
    return await service.stats(session)


@router.post(
    "/replay",
    response_model=schemas.DryRunTotals | schemas.BulkReplayResult,
    responses={503: {"description": "the broker did not confirm"}},
)
async def replay_matching(
    body: schemas.BulkReplayRequest, session: Session, runtime: Runtime, request: Request
) -> schemas.DryRunTotals | schemas.BulkReplayResult | JSONResponse:
    """Replay every open dead letter matching the filters; ``dry_run`` only counts them."""
    filters = body.to_filters()
    if body.dry_run:
        return await service.dry_run_totals(session, filters)
    outcome = await service.replay_matching(
        runtime.sessionmaker, replay_publisher(request), filters, limit=body.limit
    )
    if outcome.failed and not outcome.replayed:
        return _broker_down(Exception("the broker did not confirm"))
    return schemas.BulkReplayResult(count=outcome.replayed, failed=outcome.failed)


@router.post("/purge", response_model=schemas.PurgeResult | schemas.DryRunTotals)
async def purge_matching(
    body: schemas.PurgeRequest, session: Session
) -> schemas.PurgeResult | schemas.DryRunTotals:
    """Purge every open dead letter matching the filters (needs ``confirm: true``)."""
    if body.dry_run:
        return await service.dry_run_totals(session, body.to_filters(), replayable_only=False)
    if not body.confirm:
        raise HTTPException(422, detail='purging can\'t be undone: send "confirm": true')
    return schemas.PurgeResult(count=await service.purge_matching(session, body.to_filters()))


@router.get("/{dead_letter_id:int}", response_model=schemas.DeadLetterDetail)
async def get_dead_letter(dead_letter_id: PathId, session: Session) -> schemas.DeadLetterDetail:
    """One dead letter with every recorded attempt of its conversion."""
    try:
        return await service.get_detail(session, dead_letter_id)
    except service.DeadLetterNotFound as exc:
        raise _not_found(dead_letter_id) from exc


@router.post(
    "/{dead_letter_id:int}/replay",
    status_code=202,
    response_model=schemas.ReplayAccepted,
    responses={409: {"description": "not open"}, 503: {"description": "broker unavailable"}},
)
async def replay_dead_letter(
    dead_letter_id: PathId, runtime: Runtime, request: Request
) -> schemas.ReplayAccepted | JSONResponse:
    """Send it again through the normal pipeline, as a new delivery sequence."""
    try:
        return await service.replay_one(
            runtime.sessionmaker, replay_publisher(request), dead_letter_id
        )
    except service.DeadLetterNotFound as exc:
        raise _not_found(dead_letter_id) from exc
    except service.DeadLetterConflict as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except service.BrokerUnavailable as exc:
        return _broker_down(exc)


@router.delete("/{dead_letter_id:int}", status_code=204)
async def purge_dead_letter(dead_letter_id: PathId, session: Session) -> Response:
    """Drop one open dead letter from the list for good."""
    try:
        await service.purge_one(session, dead_letter_id)
    except service.DeadLetterNotFound as exc:
        raise _not_found(dead_letter_id) from exc
    except service.DeadLetterConflict as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    return Response(status_code=204)
