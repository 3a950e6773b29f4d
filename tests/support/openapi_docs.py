"""Checks of a service's /docs page and OpenAPI security (used by both services' tests)."""

from __future__ import annotations

import re

import httpx


async def docs_are_self_contained(base_url: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
        assert assets, page.text
        for asset in assets:
            assert asset.startswith("/"), f"/docs loads {asset} from another host"
            assert (await client.get(asset)).status_code == 200, asset
        schema: dict[str, object] = (await client.get("/openapi.json")).json()
    return schema


def security_of(schema: dict[str, object], path: str, method: str) -> set[str]:
    operation = schema["paths"][path][method]  # type: ignore[index]
    return {name for requirement in operation.get("security", []) for name in requirement}
