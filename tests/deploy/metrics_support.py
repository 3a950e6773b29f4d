"""Scraping ``/metrics`` the way Prometheus does, with prometheus-client's parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


@dataclass
class Scrape:
    families: dict[str, str]  # family name → type
    helps: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    text: str

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.samples.get((name, frozenset((labels or {}).items())), 0.0)

    def sample_names(self) -> set[str]:
        """Every series name the families define (a counter ``x``: ``x_total``, ...)."""
        names = set()
        for family, kind in self.families.items():
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
        return names


def parse(text: str) -> Scrape:
    families, helps, samples = {}, {}, {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        helps[family.name] = family.documentation
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(families, helps, samples, text)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)
