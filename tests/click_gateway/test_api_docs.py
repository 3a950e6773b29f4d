"""/docs works offline, and "Authorize" knows every credential the gateway takes."""

from __future__ import annotations

from tests.support.openapi_docs import docs_are_self_contained, security_of


async def test_docs_work_offline_and_declare_the_credentials(gateway_url: str) -> None:
    schema = await docs_are_self_contained(gateway_url)
    schemes = schema["components"]["securitySchemes"]  # type: ignore[index]
    assert {"adminToken", "advertiserKey", "advertiserQueryKey"} <= set(schemes)
    assert security_of(schema, "/api/v1/publishers", "post") == {"adminToken"}
    assert security_of(schema, "/api/v1/conversions", "post") == {"advertiserKey", "adminToken"}
    assert "advertiserQueryKey" in security_of(schema, "/api/v1/conversions/s2s", "get")
