"""API key rotation, the same for advertisers and publishers.

The new key works at once; the one it replaces keeps working for a grace
period (so integrations can switch without downtime) and then stops. Both
keys are stored only as hashes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Update, func, update

from postback_core.db.models import Advertiser, Publisher
from postback_core.web import RequestModel

MAX_GRACE_SECONDS = 30 * 24 * 3600


class KeyRotation(RequestModel):
    grace_seconds: int | None = Field(
        None,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long the old key keeps working; default: API_KEY_GRACE_SECONDS.",
    )


class KeyRotated(BaseModel):
    api_key: str = Field(description="The new key, shown only now; stored as a hash.")
    previous_key_expires_at: datetime = Field(description="When the old key stops working.")


def rotate_key_statement(
    model: type[Advertiser] | type[Publisher], row_id: int, new_key_hash: str, grace_seconds: int
) -> Update:
    """UPDATE … RETURNING the row: current key → previous (valid ``grace_seconds`` more)."""
    values: dict[str, Any] = {
        "previous_api_key_hash": model.api_key_hash,
        "previous_key_expires_at": func.now() + func.make_interval(0, 0, 0, 0, 0, 0, grace_seconds),
        "api_key_hash": new_key_hash,
    }
    return (
        update(model)
        .where(model.id == row_id)
        .values(values)
        .returning(model)
        .execution_options(synchronize_session=False)
    )
