"""Conversion reporting for advertisers: a JSON POST, and a GET for URL-only trackers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import status as http_status
from pydantic import TypeAdapter, ValidationError

from click_gateway.advertisers.service import AdvertiserKeyCache
from click_gateway.conversions.counting import counted
from click_gateway.conversions.schemas import (
    MAX_TXID_LENGTH,
    ClickId,
    ConversionCreate,
    ConversionRead,
)
from click_gateway.conversions.service import ConversionRecorder, ConversionRefused
from click_gateway.deps import Runtime
from click_gateway.offers.schemas import PayoutAmount


@asynccontextmanager
async def _recorder_lifespan(app: FastAPI) -> AsyncIterator[None]:
    recorder: ConversionRecorder = app.state.conversion_recorder
    await recorder.start()
    try:
        yield
    finally:
        await recorder.stop()


router = APIRouter(prefix="/api/v1/conversions", tags=["conversions"], lifespan=_recorder_lifespan)


def install(api: FastAPI) -> None:
    """One recorder (pool + caches) and one API-key cache per process."""
    runtime = api.state.runtime
    settings = runtime.settings
    api.state.conversion_recorder = ConversionRecorder(
        settings.database_url,
        Decimal(settings.max_payout),
        pool_size=settings.db_pool_size,
        on_committed=runtime.relay.wake,
    )
    api.state.advertiser_key_cache = AdvertiserKeyCache()
    api.include_router(router)


_payout_adapter: TypeAdapter[Decimal] = TypeAdapter(PayoutAmount)
_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Already recorded (same click_id and txid): the stored conversion"},
    401: {"description": "Missing or unknown API key"},
    403: {"description": "The click's offer belongs to another advertiser"},
    404: {"description": "Unknown click"},
}


async def get_recorder(request: Request) -> ConversionRecorder:
    recorder: ConversionRecorder = request.app.state.conversion_recorder
    return recorder


Recorder = Annotated[ConversionRecorder, Depends(get_recorder)]


async def _authenticate(request: Request, recorder: ConversionRecorder, api_key: str | None) -> int:
    cache: AdvertiserKeyCache = request.app.state.advertiser_key_cache
    advertiser_id = await cache.advertiser_id(recorder.pool, api_key)
    if advertiser_id is None:
        raise HTTPException(
            http_status.HTTP_401_UNAUTHORIZED,
            "a valid advertiser API key is required (X-Api-Key header, or key= for s2s)",
        )
    return advertiser_id


async def advertiser_from_header(
    request: Request,
    recorder: Recorder,
    x_api_key: Annotated[str | None, Header(alias="X-Api-Key")] = None,
) -> int:
    return await _authenticate(request, recorder, x_api_key)


async def advertiser_from_query(
    request: Request,
    recorder: Recorder,
    key: Annotated[str | None, Query(description="Your advertiser API key.")] = None,
) -> int:
    return await _authenticate(request, recorder, key)


async def _record(
    response: Response,
    recorder: ConversionRecorder,
    runtime: Runtime,
    advertiser_id: int,
    click_id: int,
    payout: Decimal | None,
    txid: str | None,
) -> ConversionRead:
    try:
        result = await counted(
            recorder.record(
                runtime.clicks,
                advertiser_id=advertiser_id,
                click_id=click_id,
                payout=payout,
                txid=txid,
            )
        )
    except ConversionRefused as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    response.status_code = (
        http_status.HTTP_201_CREATED if result.created else http_status.HTTP_200_OK
    )
    return result.conversion


@router.post("", status_code=http_status.HTTP_201_CREATED, responses=_ERRORS)
async def report_conversion(
    data: ConversionCreate,
    response: Response,
    recorder: Recorder,
    runtime: Runtime,
    advertiser_id: Annotated[int, Depends(advertiser_from_header)],
) -> ConversionRead:
    """201 when new; 200 with the stored conversion when (click_id, txid) was already reported."""
    return await _record(
        response, recorder, runtime, advertiser_id, data.click_id, data.payout, data.txid
    )


@router.get("/s2s", status_code=http_status.HTTP_201_CREATED, responses=_ERRORS)
async def report_conversion_s2s(
    response: Response,
    recorder: Recorder,
    runtime: Runtime,
    advertiser_id: Annotated[int, Depends(advertiser_from_query)],
    click_id: Annotated[ClickId, Query()],
    payout: Annotated[str | None, Query(description="Decimal; empty = offer payout.")] = None,
    txid: Annotated[str | None, Query(max_length=MAX_TXID_LENGTH)] = None,
) -> ConversionRead:
    """The same as POST, for trackers that can only fire a URL."""
    amount: Decimal | None = None
    if payout is not None and payout.strip():
        try:
            amount = _payout_adapter.validate_python(payout.strip())
        except ValidationError as exc:
            problems = "; ".join(err["msg"] for err in exc.errors())
            raise HTTPException(
                http_status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid payout {payout!r}: {problems}"
            ) from None
    return await _record(response, recorder, runtime, advertiser_id, click_id, amount, txid)
