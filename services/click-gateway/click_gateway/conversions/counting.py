"""Conversions by outcome and status for ``/metrics``, counted where both endpoints record."""

from __future__ import annotations

from collections.abc import Awaitable

from click_gateway.conversions.service import ConversionRefused, ConversionResult
from click_gateway.metrics import count_conversion, count_refused_conversion


async def counted(recording: Awaitable[ConversionResult]) -> ConversionResult:
    """Await ``ConversionRecorder.record(...)`` and tally what came of it."""
    try:
        result = await recording
    except ConversionRefused as exc:
        count_refused_conversion(exc.status_code)
        raise
    count_conversion(result.created, result.conversion.status)
    return result
