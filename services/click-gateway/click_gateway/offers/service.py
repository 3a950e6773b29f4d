"""Offers: what a SmartLink can send a visitor to, and what a conversion pays."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.advertisers.service import advertiser_exists
from click_gateway.offers.macros import validate_offer_url_template
from click_gateway.offers.repository import OfferRepository
from click_gateway.offers.schemas import OfferCreate, OfferRead, OfferUpdate
from click_gateway.pagination import Page, PageParams, is_storable_id


class OfferNotFound(LookupError):
    pass


class InvalidOffer(ValueError):
    """Refused input; the message is the 422 ``detail``."""


def check_payout(payout: Decimal, max_payout: Decimal) -> None:
    if payout > max_payout:
        raise InvalidOffer(f"payout must be at most {max_payout}")


async def create_offer(session: AsyncSession, data: OfferCreate, max_payout: Decimal) -> OfferRead:
    """Raises ``InvalidOffer`` (bad template, unknown advertiser, payout above the cap)."""
    url_template = validate_offer_url_template(data.url_template)
    check_payout(data.payout, max_payout)
    if not await advertiser_exists(session, data.advertiser_id):
        raise InvalidOffer(f"advertiser {data.advertiser_id} does not exist")
    offer = await OfferRepository(session).create(
        advertiser_id=data.advertiser_id,
        name=data.name.strip(),
        url_template=url_template,
        payout=data.payout,
        countries=data.countries,
        os=data.os,
        devices=data.devices,
        weight=data.weight,
        attribution_window_days=data.attribution_window_days,
    )
    return OfferRead.model_validate(offer)


async def update_offer(
    session: AsyncSession, offer_id: int, data: OfferUpdate, max_payout: Decimal
) -> OfferRead:
    values: dict[str, Any] = {}
    for field in data.model_fields_set:
        value = getattr(data, field)
        if value is None and field not in ("countries", "os", "devices"):
            raise InvalidOffer(f"{field} can't be null")
        values[field] = value
    if "url_template" in values:
        values["url_template"] = validate_offer_url_template(values["url_template"])
    if "name" in values:
        values["name"] = values["name"].strip()
    if "payout" in values:
        check_payout(values["payout"], max_payout)
    if not is_storable_id(offer_id):
        raise OfferNotFound(offer_id)
    repository = OfferRepository(session)
    offer = await repository.update(offer_id, values) if values else await repository.get(offer_id)
    if offer is None:
        raise OfferNotFound(offer_id)
    return OfferRead.model_validate(offer)


async def get_offer(session: AsyncSession, offer_id: int) -> OfferRead:
    offer = await OfferRepository(session).get(offer_id) if is_storable_id(offer_id) else None
    if offer is None:
        raise OfferNotFound(offer_id)
    return OfferRead.model_validate(offer)


async def list_offers(
    session: AsyncSession, page: PageParams, advertiser_id: int | None = None
) -> Page[OfferRead]:
    rows = await OfferRepository(session).list_after(page.after_id, page.limit + 1, advertiser_id)
    items = [OfferRead.model_validate(r) for r in rows[: page.limit]]
    more = len(rows) > page.limit
    return Page(items=items, next_after_id=items[-1].id if more else None)


async def missing_offer_ids(session: AsyncSession, offer_ids: list[int]) -> list[int]:
    storable = [i for i in offer_ids if is_storable_id(i)]
    found = await OfferRepository(session).existing_ids(storable)
    return [i for i in offer_ids if i not in found]
