"""Conversion reporting for advertisers: a JSON POST, and a GET for URL-only trackers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from pydantic import TypeAdapter, ValidationError

from click_gateway.advertisers.service import AdvertiserKeyCache
from click_gateway.conversions import service
from click_gateway.conversions.schemas import (
    MAX_TXID_LENGTH,
    ClickId,
    ConversionCreate,
    ConversionRead,
)
from click_gateway.deps import Runtime, Session
from click_gateway.offers.schemas import PayoutAmount

router = APIRouter(prefix="/api/v1/conversions", tags=["conversions"])

_payout_adapter: TypeAdapter[Decimal] = TypeAdapter(PayoutAmount)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown API key"},
    403: {"description": "The click's offer belongs to another advertiser"},
    404: {"description": "Unknown click"},
}


def key_cache(request: Request) -> AdvertiserKeyCache:
    cache: AdvertiserKeyCache = request.app.state.advertiser_key_cache
    return cache


async def _authenticate(api_key: str | None, session: Session, cache: AdvertiserKeyCache) -> int:
    advertiser_id = await cache.advertiser_id(session, api_key)
    if advertiser_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid advertiser API key is required (X-Api-Key header, or key= for s2s)",
        )
    return advertiser_id


async def advertiser_from_header(
    session: Session,
    cache: Annotated[AdvertiserKeyCache, Depends(key_cache)],
    x_api_key: Annotated[str | None, Header(alias="X-Api-Key")] = None,
) -> int:
    return await _authenticate(x_api_key, session, cache)


async def advertiser_from_query(
    session: Session,
    cache: Annotated[AdvertiserKeyCache, Depends(key_cache)],
    key: Annotated[str | None, Query(description="Your advertiser API key.")] = None,
) -> int:
    return await _authenticate(key, session, cache)


async def _record(
    response: Response,
    session: Session,
    runtime: Runtime,
    advertiser_id: int,
    click_id: int,
    payout: Decimal | None,
    txid: str | None,
) -> ConversionRead:
    try:
        result = await service.record_conversion(
            session,
            runtime.clicks,
            advertiser_id=advertiser_id,
            click_id=click_id,
            payout=payout,
            txid=txid,
            max_payout=Decimal(runtime.settings.max_payout),
        )
    except service.ConversionRefused as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    response.status_code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    return result.conversion


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Already recorded (same click_id and txid)"}, **_ERRORS},
)
async def report_conversion(
    data: ConversionCreate,
    response: Response,
    session: Session,
    runtime: Runtime,
    advertiser_id: Annotated[int, Depends(advertiser_from_header)],
) -> ConversionRead:
    """201 when new; 200 with the stored conversion when (click_id, txid) was already reported."""
    return await _record(
        response, session, runtime, advertiser_id, data.click_id, data.payout, data.txid
    )


@router.get(
    "/s2s",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Already recorded (same click_id and txid)"}, **_ERRORS},
)
async def report_conversion_s2s(
    response: Response,
    session: Session,
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
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid payout {payout!r}: {problems}"
            ) from None
    return await _record(response, session, runtime, advertiser_id, click_id, amount, txid)
