"""Keyset pagination for admin collections: stable under inserts, cheap at any depth."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

T = TypeVar("T")

MAX_BIGINT = 2**63 - 1
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class PageParams(BaseModel):
    limit: int
    after_id: int


def _page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")] = (
        DEFAULT_PAGE_SIZE
    ),
    after_id: Annotated[
        int, Query(ge=0, le=MAX_BIGINT, description="Return items with id greater than this.")
    ] = 0,
) -> PageParams:
    return PageParams(limit=limit, after_id=after_id)


Pagination = Annotated[PageParams, Depends(_page_params)]


class Page(BaseModel, Generic[T]):
    """One page, ordered by id; pass ``next_after_id`` back as ``after_id`` for the next."""

    items: list[T]
    next_after_id: int | None


def is_storable_id(value: int) -> bool:
    """Ids outside BIGINT can't exist: answer 404 instead of a database overflow."""
    return 1 <= value <= MAX_BIGINT
