"""/docs works offline, and "Authorize" knows every credential the dispatcher takes."""

from __future__ import annotations

from tests.postback_dispatcher.conftest import DispatcherHandle
from tests.support.openapi_docs import docs_are_self_contained, security_of


async def test_docs_work_offline_and_declare_the_credentials(dispatcher: DispatcherHandle) -> None:
    schema = await docs_are_self_contained(dispatcher.base_url)
    assert security_of(schema, "/api/v1/dead-letters", "get") == {"adminToken"}
    assert security_of(schema, "/api/v1/me/postback", "get") == {"publisherKey"}
