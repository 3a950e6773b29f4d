"""``POST /api/v1/conversions/bulk``: many reports and status changes in one request.

Rows are validated one by one, so a bad row is answered in its result and
the others still go through. New conversions go through the same recorder
as single reports (so they are group-committed together); status changes are
applied in file order, each in its own transaction. Everything is
idempotent: re-sending a file answers 200 for rows already recorded and
changes nothing.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi import status as http_status
from pydantic import BaseModel, Field, ValidationError

from click_gateway.clicks.service import ClickService
from click_gateway.conversions.schemas import (
    MAX_REASON_LENGTH,
    MAX_TXID_LENGTH,
    ClickId,
    ConversionId,
    ConversionRead,
    GoalName,
    ReportedAmount,
    Text,
)
from click_gateway.conversions.service import Caller, ConversionRecorder, ConversionRefused
from click_gateway.offers.schemas import PayoutAmount
from postback_core.enums import ConversionStatus
from postback_core.web import RequestModel

MAX_ROWS = 10_000
PATH = "/api/v1/conversions/bulk"
MAX_BODY_BYTES = 8 * 1024 * 1024
# New conversions submitted at once (the recorder batches them into statements).
REPORTS_IN_FLIGHT = 256
CSV_TYPES = ("text/csv", "application/csv")


class BulkRow(RequestModel):
    """A new conversion, or (with ``status``) a change of one."""

    conversion_id: ConversionId | None = None
    click_id: ClickId | None = None
    goal: GoalName | None = None
    payout: PayoutAmount | None = None
    amount: ReportedAmount | None = None
    txid: Text | None = Field(None, max_length=MAX_TXID_LENGTH)
    status: ConversionStatus | None = None
    reason: Text | None = Field(None, max_length=MAX_REASON_LENGTH)


class RowResult(BaseModel):
    row: int = Field(description="0-based position in the file (CSV: after the header).")
    status_code: int = Field(description="What the single request would have answered.")
    conversion: ConversionRead | None = None
    detail: str | None = None


class BulkResult(BaseModel):
    results: list[RowResult]
    created: int
    unchanged_or_changed: int
    failed: int


def _refuse(detail: str, code: int = http_status.HTTP_422_UNPROCESSABLE_CONTENT) -> HTTPException:
    return HTTPException(code, detail)


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _refuse(
                f"a bulk file is at most {MAX_BODY_BYTES} bytes",
                http_status.HTTP_413_CONTENT_TOO_LARGE,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _csv_rows(body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _refuse("the CSV file must be UTF-8") from None
    if "\x00" in text:
        raise _refuse("the CSV file must not contain NUL characters")
    try:
        return _read_csv(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise _refuse(f"unreadable CSV: {str(exc)[:200]}") from None


def _read_csv(reader: csv.DictReader[str]) -> list[Any]:
    known = set(BulkRow.model_fields)
    unknown = [name for name in reader.fieldnames or () if name not in known]
    if not reader.fieldnames or unknown:
        raise _refuse(
            f"the CSV header must name columns among {', '.join(sorted(known))}"
            + (f"; unknown: {', '.join(n[:40] for n in unknown[:5])}" if unknown else "")
        )
    rows: list[Any] = []
    for record in reader:
        rows.append({k: v for k, v in record.items() if k is not None and v not in (None, "")})
        if len(rows) > MAX_ROWS:
            break  # one too many is enough to refuse the file
    return rows


async def parse(request: Request) -> list[BulkRow | str]:
    """Each row validated, or the reason it isn't (the whole file refused only if unreadable)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await _body(request)
    raw: Any
    if content_type in CSV_TYPES:
        raw = _csv_rows(body)
    else:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _refuse(f"the body must be a JSON array or CSV (text/csv): {exc}") from None
        if not isinstance(raw, list):
            raise _refuse("the body must be a JSON array of rows")
    if len(raw) > MAX_ROWS:
        raise _refuse(
            f"at most {MAX_ROWS} rows per request", http_status.HTTP_413_CONTENT_TOO_LARGE
        )
    if not raw:
        raise _refuse("no rows")
    rows: list[BulkRow | str] = []
    for item in raw:
        try:
            row = BulkRow.model_validate(item)
        except ValidationError as exc:
            rows.append(
                "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}"
                    for err in exc.errors()
                )
            )
            continue
        if row.status is None and row.click_id is None:
            rows.append("click_id is required for a new conversion")
        elif row.status is not None and row.conversion_id is None and row.click_id is None:
            rows.append("a status change needs conversion_id, or click_id (and txid)")
        else:
            rows.append(row)
    return rows


async def run(
    rows: list[BulkRow | str],
    recorder: ConversionRecorder,
    clicks: ClickService,
    caller: Caller,
    change: Callable[[BulkRow], Awaitable[ConversionRead]],
) -> BulkResult:
    results: list[RowResult | None] = [None] * len(rows)
    reports = [(i, r) for i, r in enumerate(rows) if isinstance(r, BulkRow) and r.status is None]
    for index, row in enumerate(rows):
        if isinstance(row, str):
            results[index] = RowResult(row=index, status_code=422, detail=row)

    async def report(index: int, row: BulkRow) -> None:
        assert row.click_id is not None
        try:
            outcome = await recorder.record(
                clicks,
                advertiser_id=caller.advertiser_id,
                click_id=row.click_id,
                payout=row.payout,
                txid=row.txid,
                goal=row.goal,
                amount=row.amount,
            )
        except ConversionRefused as exc:
            results[index] = RowResult(row=index, status_code=exc.status_code, detail=exc.detail)
            return
        results[index] = RowResult(
            row=index, status_code=201 if outcome.created else 200, conversion=outcome.conversion
        )

    for start in range(0, len(reports), REPORTS_IN_FLIGHT):
        await asyncio.gather(*(report(i, r) for i, r in reports[start : start + REPORTS_IN_FLIGHT]))

    for index, row in enumerate(rows):
        if isinstance(row, BulkRow) and row.status is not None:
            try:
                results[index] = RowResult(row=index, status_code=200, conversion=await change(row))
            except ConversionRefused as exc:
                results[index] = RowResult(
                    row=index, status_code=exc.status_code, detail=exc.detail
                )
    final = [r for r in results if r is not None]
    return BulkResult(
        results=final,
        created=sum(1 for r in final if r.status_code == 201),
        unchanged_or_changed=sum(1 for r in final if r.status_code == 200),
        failed=sum(1 for r in final if r.status_code >= 400),
    )
