from __future__ import annotations

import httpx


async def test_healthz_answers_while_process_is_up(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_unknown_path_is_json_404(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json()["detail"]


async def test_openapi_docs_are_served(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
