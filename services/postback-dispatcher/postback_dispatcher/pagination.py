"""Opaque keyset cursors: the sort key of the last row of a page, base64-encoded."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import orjson


class CursorError(ValueError):
    """The cursor was not produced by us (or was mangled in transit)."""


def encode_cursor(*key: object) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[object]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise CursorError("invalid cursor") from exc
    if not isinstance(values, list):
        raise CursorError("invalid cursor")
    return values


def decode_time_id_cursor(cursor: str) -> tuple[datetime, int]:
    values = decode_cursor(cursor)
    try:
        stamp, row_id = values
        moment = datetime.fromisoformat(str(stamp))
        if moment.tzinfo is None or not isinstance(row_id, int):
            raise ValueError
    except (ValueError, TypeError) as exc:
        raise CursorError("invalid cursor") from exc
    return moment, row_id


def decode_id_cursor(cursor: str) -> int:
    values = decode_cursor(cursor)
    if len(values) != 1 or not isinstance(values[0], int):
        raise CursorError("invalid cursor")
    return values[0]
