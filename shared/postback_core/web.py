"""Web plumbing shared by both services' FastAPI apps.

Every error leaves as JSON in one shape (:class:`ErrorResponse`, documented in
each operation's 4xx responses) with a ``detail`` saying what is wrong —
never an HTML page, never a 500 for bad input; one unit of work per request;
admin authentication by bearer token compared in constant time. Input rules
every endpoint shares live here once: text never carries NUL characters
(PostgreSQL can't store them), ids fit the BIGINT columns they look up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import models_json_schema
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from postback_core.security import secrets_equal

log = logging.getLogger(__name__)

MAX_DB_ID = 2**63 - 1  # ids are BIGINT: anything larger can't exist
NUL_REFUSED = "must not contain NUL characters"


# --- the one error shape -----------------------------------------------------------------


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: body/query/path/header, then the field")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every error response; some add fields (e.g. ``unknown_macros``)."""

    model_config = ConfigDict(extra="allow")

    detail: str | list[ValidationIssue] = Field(
        description="what is wrong: a sentence, or one entry per invalid input"
    )


def _clean_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(app, request.url.path)}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _clean_errors(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    document_error_responses(app)


def _allowed_methods(app: FastAPI, path: str) -> str:
    """Every method some route serves at ``path`` (Starlette's 405 names only one route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def document_error_responses(app: FastAPI) -> None:
    """Point every operation's 4xx responses (and a catch-all ``4XX``) at ErrorResponse."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build_schema()
        _, definitions = models_json_schema(
            [(ErrorResponse, "validation")], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definitions.get("$defs", {}))
        error_content = {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        }
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for code, response in responses.items():
                    if code.startswith("4"):
                        response["content"] = error_content
                responses.setdefault(
                    "4XX", {"description": "Refused: `detail` says why", "content": error_content}
                )
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- shared input rules ------------------------------------------------------------------


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple | set | frozenset):
        return any(_contains_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    return False


def refuse_nul(value: Any) -> Any:
    """The one NUL rule: text (also inside lists and maps) must not contain U+0000."""
    if _contains_nul(value):
        raise ValueError(NUL_REFUSED)
    return value


# A text parameter (query, header, form) that can't carry NUL.
Text = Annotated[str, AfterValidator(refuse_nul)]


def _not_a_bare_number(value: Any) -> Any:
    """A date-time, as documented: "0.5" is not one (pydantic would read epoch seconds)."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("must be an ISO 8601 date-time")
    return value


def _naive_is_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A moment in a filter (since/until): ISO 8601 only; without an offset it is UTC.
Moment = Annotated[datetime, BeforeValidator(_not_a_bare_number), AfterValidator(_naive_is_utc)]


_FLAG_TYPES = (bool, bool | None)
_INTEGER_TYPES = (int, int | None)


class RequestModel(BaseModel):
    """Base of every request body and query model.

    No field may carry NUL characters, and JSON's numbers and booleans stay
    apart: ``0`` is not ``false`` and ``true`` is not ``1`` (pydantic's lax
    mode would convert them; the schema we publish says they differ).
    """

    @field_validator("*", mode="before", check_fields=False)
    @classmethod
    def _numbers_are_not_flags(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            if field.annotation in _FLAG_TYPES and isinstance(value, int | float):
                if not isinstance(value, bool):
                    raise ValueError("must be true or false")
            elif field.annotation in _INTEGER_TYPES and isinstance(value, bool):
                raise ValueError("must be an integer")
        return value

    @field_validator("*", mode="after", check_fields=False)
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


# A resource id in a path: 1 ..= BIGINT max, so a huge id is a 422, never an overflow.
PathId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The resource's id.")]


# --- unit of work and admin authentication -----------------------------------------------


async def unit_of_work_session(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work per request: committed here on success, never by services."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


ADMIN_REFUSAL = "admin authentication required: Authorization: Bearer <ADMIN_TOKEN>"


# The credentials each API takes, declared as OpenAPI security schemes so that
# /docs offers "Authorize" and "Try it out" sends them. They only read the
# header (auto_error=False); the checks are the dependencies that use them.
ADMIN_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="Operators: `Authorization: Bearer <ADMIN_TOKEN>`.",
)
ADVERTISER_KEY = APIKeyHeader(
    name="X-Api-Key",
    auto_error=False,
    scheme_name="advertiserKey",
    description="Advertisers: the `api_key` answered when the advertiser was created.",
)
ADVERTISER_QUERY_KEY = APIKeyQuery(
    name="key",
    auto_error=False,
    scheme_name="advertiserQueryKey",
    description="Advertisers whose tracker can only fire a URL: `?key=<api_key>`.",
)
PUBLISHER_KEY = APIKeyHeader(
    name="X-Api-Key",
    auto_error=False,
    scheme_name="publisherKey",
    description="Publishers: the `api_key` answered when the publisher was created.",
)


def admin_bearer_valid(authorization: str | None, admin_token: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets_equal(token.strip(), admin_token)


def check_admin_bearer(request: Request, admin_token: str) -> None:
    if not admin_bearer_valid(request.headers.get("authorization"), admin_token):
        raise HTTPException(
            status_code=401, detail=ADMIN_REFUSAL, headers={"WWW-Authenticate": "Bearer"}
        )


def header_value(scope: dict[str, Any], name: bytes) -> str | None:
    """One request header from an ASGI scope (names are lower-case bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


AdminCheck = Callable[[dict[str, Any]], bool]
