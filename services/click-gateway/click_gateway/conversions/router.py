"""Conversions for advertisers (``X-Api-Key``) and operators (the admin token).

Report (a JSON POST, a GET for URL-only trackers, or a bulk file), change a
status, read one with its history, list them. An advertiser sees and changes
only its own conversions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Query,
    Request,
    Response,
    Security,
)
from fastapi import status as http_status
from pydantic import TypeAdapter, ValidationError

from click_gateway.advertisers.service import AdvertiserKeyCache, address_refused
from click_gateway.conversions import bulk, repository, service
from click_gateway.conversions.counting import counted
from click_gateway.conversions.holds import HoldExpiry
from click_gateway.conversions.schemas import (
    MAX_GOAL_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TXID_LENGTH,
    ClickId,
    ConversionCreate,
    ConversionDetail,
    ConversionPage,
    ConversionRead,
    ReportedAmount,
    StatusHistoryEntry,
    StatusUpdate,
    Text,
)
from click_gateway.conversions.service import (
    OPERATOR,
    Caller,
    ConversionRecorder,
    ConversionRefused,
)
from click_gateway.deps import Runtime
from click_gateway.offers.schemas import PayoutAmount
from click_gateway.pagination import DEFAULT_PAGE_SIZE, MAX_BIGINT, MAX_PAGE_SIZE
from postback_core.enums import ConversionStatus
from postback_core.web import (
    ADMIN_BEARER,
    ADVERTISER_KEY,
    ADVERTISER_QUERY_KEY,
    Moment,
    check_admin_bearer,
)

T = TypeVar("T")


@asynccontextmanager
async def _recorder_lifespan(app: FastAPI) -> AsyncIterator[None]:
    recorder: ConversionRecorder = app.state.conversion_recorder
    await recorder.start()
    holds: HoldExpiry = app.state.hold_expiry
    holds.start()
    try:
        yield
    finally:
        await holds.stop()
        await recorder.stop()


router = APIRouter(prefix="/api/v1/conversions", tags=["conversions"], lifespan=_recorder_lifespan)


def install(api: FastAPI, clock: service.Clock = service.utc_now) -> None:
    """One recorder (pool + caches), API-key cache and hold job per process."""
    runtime = api.state.runtime
    settings = runtime.settings
    api.state.conversion_recorder = ConversionRecorder(
        settings.database_url,
        Decimal(settings.max_payout),
        pool_size=settings.db_pool_size,
        on_committed=runtime.relay.wake,
        clock=clock,
    )
    api.state.advertiser_key_cache = AdvertiserKeyCache()
    api.state.hold_expiry = HoldExpiry(
        api.state.conversion_recorder, runtime.clicks.find_click, settings.hold_check_seconds
    )
    api.include_router(router)


_payout_adapter: TypeAdapter[Decimal] = TypeAdapter(PayoutAmount)
_amount_adapter: TypeAdapter[Decimal] = TypeAdapter(ReportedAmount)
_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Already recorded (same click_id, goal and txid): the stored conversion"},
    401: {"description": "Missing or unknown API key"},
    403: {"description": "Another advertiser's click, or an address outside allowed_ips"},
    404: {"description": "Unknown click"},
    422: {"description": "Invalid input, or a goal the offer doesn't have"},
}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown API key"},
    404: {"description": "Unknown conversion (or not yours)"},
    409: {"description": "The transition is not allowed from the current status"},
}


async def get_recorder(request: Request) -> ConversionRecorder:
    recorder: ConversionRecorder = request.app.state.conversion_recorder
    return recorder


Recorder = Annotated[ConversionRecorder, Depends(get_recorder)]


async def _advertiser(request: Request, recorder: ConversionRecorder, api_key: str) -> Caller:
    cache: AdvertiserKeyCache = request.app.state.advertiser_key_cache
    key = await cache.lookup(recorder.pool, api_key)
    if key is None:
        raise HTTPException(
            http_status.HTTP_401_UNAUTHORIZED,
            "a valid advertiser API key is required (X-Api-Key header, or key= for s2s)",
        )
    if key.allowed_networks is not None:
        runtime = request.app.state.runtime
        peer = request.client.host if request.client is not None else None
        address = runtime.clicks.addresses.resolve(peer, request.headers.get("x-forwarded-for"))
        if not key.allows(address):
            raise HTTPException(http_status.HTTP_403_FORBIDDEN, address_refused(key, address))
    return Caller(key.advertiser_id)


async def _caller(request: Request, recorder: ConversionRecorder, api_key: str | None) -> Caller:
    """An advertiser by its key, else an operator by the admin token, else 401."""
    if api_key is None and request.headers.get("authorization"):
        check_admin_bearer(request, request.app.state.runtime.settings.admin_token)
        return OPERATOR
    return await _advertiser(request, recorder, api_key or "")


async def caller_from_header(
    request: Request,
    recorder: Recorder,
    x_api_key: Annotated[str | None, Security(ADVERTISER_KEY)] = None,
    _: Annotated[object, Security(ADMIN_BEARER)] = None,
) -> Caller:
    return await _caller(request, recorder, x_api_key)


async def caller_from_query(
    request: Request,
    recorder: Recorder,
    key: Annotated[str | None, Security(ADVERTISER_QUERY_KEY)] = None,
    x_api_key: Annotated[str | None, Security(ADVERTISER_KEY)] = None,
    _: Annotated[object, Security(ADMIN_BEARER)] = None,
) -> Caller:
    return await _caller(request, recorder, key if key is not None else x_api_key)


HeaderCaller = Annotated[Caller, Depends(caller_from_header)]
QueryCaller = Annotated[Caller, Depends(caller_from_query)]


async def _refusing(work: Awaitable[T]) -> T:
    try:
        return await work
    except ConversionRefused as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


async def _record(
    response: Response,
    recorder: ConversionRecorder,
    runtime: Runtime,
    caller: Caller,
    data: ConversionCreate,
) -> ConversionRead:
    result = await _refusing(
        counted(
            recorder.record(
                runtime.clicks,
                advertiser_id=caller.advertiser_id,
                click_id=data.click_id,
                payout=data.payout,
                txid=data.txid,
                goal=data.goal,
                amount=data.amount,
            )
        )
    )
    response.status_code = (
        http_status.HTTP_201_CREATED if result.created else http_status.HTTP_200_OK
    )
    return result.conversion


async def _change(
    recorder: ConversionRecorder,
    runtime: Runtime,
    caller: Caller,
    find: Callable[[asyncpg.Connection], Awaitable[repository.StoredConversion]],
    update: StatusUpdate,
) -> ConversionRead:
    """One status change in its own transaction (the unit of work of the request)."""

    async def work(conn: asyncpg.Connection) -> ConversionRead:
        conversion = await find(conn)
        changed = await service.change_status(
            conn,
            runtime.clicks.find_click,
            conversion,
            update.status,
            actor=caller.actor,
            actor_id=caller.advertiser_id,
            reason=update.reason,
            now=recorder.clock(),
        )
        return service.read_model(changed)

    return await _refusing(recorder.in_transaction(work))


@router.post("", status_code=http_status.HTTP_201_CREATED, responses=_ERRORS)
async def report_conversion(
    data: ConversionCreate,
    response: Response,
    recorder: Recorder,
    runtime: Runtime,
    caller: HeaderCaller,
) -> ConversionRead:
    """201 when new (possibly stored rejected: caps, attribution window); 200 for a repeat."""
    return await _record(response, recorder, runtime, caller, data)


def _decimal_param(adapter: TypeAdapter[Decimal], name: str, text: str | None) -> Decimal | None:
    if text is None or not text.strip():
        return None
    try:
        return adapter.validate_python(text.strip())
    except ValidationError as exc:
        problems = "; ".join(err["msg"] for err in exc.errors())
        raise HTTPException(
            http_status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid {name} {text[:40]!r}: {problems}"
        ) from None


@router.get("/s2s", status_code=http_status.HTTP_201_CREATED, responses=_ERRORS)
async def report_conversion_s2s(
    response: Response,
    recorder: Recorder,
    runtime: Runtime,
    caller: QueryCaller,
    click_id: Annotated[ClickId, Query()],
    payout: Annotated[str | None, Query(description="Decimal; empty = goal payout.")] = None,
    txid: Annotated[Text | None, Query(max_length=MAX_TXID_LENGTH)] = None,
    goal: Annotated[Text | None, Query(max_length=MAX_GOAL_LENGTH)] = None,
    amount: Annotated[str | None, Query(description="Decimal: the sale's value.")] = None,
    status: Annotated[
        ConversionStatus | None,
        Query(description="Change the status of the conversion already reported as txid."),
    ] = None,
    reason: Annotated[Text | None, Query(max_length=MAX_REASON_LENGTH)] = None,
) -> ConversionRead:
    """The same as POST (and, with ``status=``, as PATCH) for trackers that can only fire a URL."""
    if status is not None:
        response.status_code = http_status.HTTP_200_OK

        async def find(conn: asyncpg.Connection) -> repository.StoredConversion:
            return await service.find_for_change(conn, caller, click_id, txid, goal or None)

        return await _change(
            recorder, runtime, caller, find, StatusUpdate(status=status, reason=reason)
        )
    data = ConversionCreate(
        click_id=click_id,
        goal=goal or None,
        payout=_decimal_param(_payout_adapter, "payout", payout),
        amount=_decimal_param(_amount_adapter, "amount", amount),
        txid=txid,
    )
    return await _record(response, recorder, runtime, caller, data)


@router.post("/bulk")
async def report_bulk(
    request: Request, recorder: Recorder, runtime: Runtime, caller: HeaderCaller
) -> bulk.BulkResult:
    """Up to 10,000 new conversions or status changes: a JSON array, or CSV with a header.

    A row with ``status`` changes a conversion (by ``conversion_id``, or by
    ``click_id`` + ``txid``); any other row reports one. One result per row,
    in order; re-sending the same file changes nothing and answers the same.
    """
    rows = await bulk.parse(request)

    async def change(row: bulk.BulkRow) -> ConversionRead:
        update = StatusUpdate(status=row.status, reason=row.reason)

        async def find(conn: asyncpg.Connection) -> repository.StoredConversion:
            if row.conversion_id is not None:
                return await service.load_for_change(conn, row.conversion_id, caller)
            assert row.click_id is not None
            return await service.find_for_change(conn, caller, row.click_id, row.txid, row.goal)

        try:
            return await _change(recorder, runtime, caller, find, update)
        except HTTPException as exc:
            raise ConversionRefused(exc.status_code, str(exc.detail)) from None

    return await bulk.run(rows, recorder, runtime.clicks, caller, change)


@router.patch("/{conversion_id:int}", responses=_CHANGE_ERRORS)
async def change_status(
    conversion_id: int,
    data: StatusUpdate,
    recorder: Recorder,
    runtime: Runtime,
    caller: HeaderCaller,
) -> ConversionRead:
    """pending → approved | rejected; approved → rejected (a reversal); rejected → approved
    by an operator only. The same status again changes nothing."""
    if not 1 <= conversion_id <= MAX_BIGINT:
        raise HTTPException(http_status.HTTP_404_NOT_FOUND, f"conversion {conversion_id} not found")

    async def find(conn: asyncpg.Connection) -> repository.StoredConversion:
        return await service.load_for_change(conn, conversion_id, caller)

    return await _change(recorder, runtime, caller, find, data)


@router.get("/{conversion_id:int}", responses=_CHANGE_ERRORS)
async def get_conversion(
    conversion_id: int, recorder: Recorder, caller: HeaderCaller
) -> ConversionDetail:
    conversion = (
        await repository.get(recorder.pool, conversion_id)
        if 1 <= conversion_id <= MAX_BIGINT
        else None
    )
    if conversion is None or (
        caller.advertiser_id is not None and conversion.advertiser_id != caller.advertiser_id
    ):
        raise HTTPException(http_status.HTTP_404_NOT_FOUND, f"conversion {conversion_id} not found")
    history = await repository.history(recorder.pool, conversion_id)
    base = service.read_model(conversion).model_dump()
    return ConversionDetail(
        **base,
        sequence=conversion.sequence,
        hold_until=conversion.hold_until,
        offer_id=conversion.offer_id,
        publisher_id=conversion.publisher_id,
        status_history=[
            StatusHistoryEntry(
                status=ConversionStatus(h.status),
                previous_status=ConversionStatus(h.previous_status) if h.previous_status else None,
                at=h.at,
                by=h.actor,
                advertiser_id=h.actor_id,
                reason=h.reason,
            )
            for h in history
        ],
    )


def _utc(value: datetime | None, name: str) -> datetime | None:
    """In UTC (naive = UTC); 422 for a moment PostgreSQL can't represent."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise HTTPException(
            http_status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name} is out of range"
        ) from None


@router.get("")
async def list_conversions(
    recorder: Recorder,
    caller: HeaderCaller,
    status: ConversionStatus | None = None,
    goal: Annotated[Text | None, Query(max_length=MAX_GOAL_LENGTH)] = None,
    since: Annotated[Moment | None, Query(description="Created at or after.")] = None,
    until: Annotated[Moment | None, Query(description="Created before.")] = None,
    advertiser_id: Annotated[
        int | None, Query(ge=1, le=MAX_BIGINT, description="Operators only.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    after_id: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> ConversionPage:
    """Keyset pages by id, oldest first; an advertiser sees only its own."""
    since, until = _utc(since, "since"), _utc(until, "until")
    scope = caller.advertiser_id if caller.advertiser_id is not None else advertiser_id
    rows = await repository.list_after(
        recorder.pool,
        after_id=after_id,
        limit=limit + 1,
        advertiser_id=scope,
        status=status,
        goal=goal,
        since=since,
        until=until,
    )
    items = [service.read_model(r) for r in rows[:limit]]
    more = len(rows) > limit
    return ConversionPage(items=items, next_after_id=items[-1].conversion_id if more else None)
