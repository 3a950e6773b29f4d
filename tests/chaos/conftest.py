"""The chaos run brings up its own RabbitMQ cluster and PostgreSQL cluster (root, ~3 min):
it runs only when selected with ``-m chaos``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(
        reason="the chaos run is selected with -m chaos (make chaos for the full one)"
    )
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)
