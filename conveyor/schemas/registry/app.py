"""The registry's REST API: the Confluent Schema Registry endpoints Avro clients use.

Responses carry ``application/vnd.schemaregistry.v1+json``; errors are
``{"error_code": ..., "message": ...}`` with Confluent's codes, so confluent-kafka's
``SchemaRegistryClient`` and serde work against it unchanged. Query parameters newer
clients send (``normalize``, ``format``, ``subject`` on id lookups) are accepted;
identity is always by normalised JSON, so ``normalize`` changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor import db
from conveyor.schemas.registry import compat
from conveyor.schemas.registry.store import (
    GLOBAL,
    RegistryError,
    RegistryStore,
    SubjectVersion,
    config_not_found,
)
from conveyor.settings import Settings

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_CONTENT_TYPES = frozenset(
    {
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
        "application/octet-stream",
    }
)
READWRITE = "READWRITE"
_MAX_VERSION = 2**31 - 1


class RegistryResponse(JSONResponse):
    """A JSON response with the Schema Registry media type."""

    media_type = MEDIA_TYPE


def create_app(settings: Settings, *, pool: asyncpg.Pool[Any] | None = None) -> Starlette:
    """Builds the registry ASGI application.

    Args:
        settings: Where the tables live (``database_url``, ``database_schema``).
        pool: A pool to use instead of opening one at startup; the caller closes it.

    Returns:
        A Starlette app; its lifespan opens (and closes) the Postgres pool.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = pool is None
        active = await db.create_pool(settings) if pool is None else pool
        app.state.store = RegistryStore(active)
        try:
            yield
        finally:
            if own:
                await active.close()

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            RegistryError: _registry_error,
            HTTPException: _http_error,
            asyncpg.PostgresError: _store_error,
            asyncpg.InterfaceError: _store_error,
            OSError: _store_error,
        },
    )


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return _error(exc.status, exc.error_code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, exc.status_code, f"HTTP {exc.status_code} {exc.detail}")
    response.headers.update(exc.headers or {})
    return response


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("registry store error on %s %s: %s", request.method, request.url.path, exc)
    return _error(500, 50001, f"Error in the backend data store: {exc}")


def _error(status: int, code: int, message: str) -> Response:
    return RegistryResponse({"error_code": code, "message": message}, status_code=status)


# Request parsing ------------------------------------------------------------------------


def _store(request: Request) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def _flag(request: Request, name: str) -> bool:
    # Java's Boolean.parseBoolean semantics; confluent-kafka sends both "true" and "True".
    return request.query_params.get(name, "").lower() == "true"


def _page(request: Request, items: list[Any]) -> list[Any]:
    try:
        offset = max(int(request.query_params.get("offset", "0")), 0)
        limit = int(request.query_params.get("limit", "-1"))
    except ValueError:
        return items
    return items[offset:] if limit < 0 else items[offset : offset + limit]


def _subject(request: Request) -> str:
    subject: str = request.path_params["subject"]
    return subject


def _version(request: Request) -> int | None:
    """The ``{version}`` path parameter: ``None`` for ``latest`` (or -1), else 1..2^31-1."""
    text: str = request.path_params["version"]
    if text.lower() == "latest" or text == "-1":
        return None
    try:
        version = int(text)
    except ValueError:
        version = 0
    if not 1 <= version <= _MAX_VERSION:
        raise RegistryError(
            422,
            42202,
            f"The specified version '{text}' is not a valid version id. Allowed values are "
            f'between [1, {_MAX_VERSION}] and the string "latest"',
        )
    return version


def _schema_id(request: Request) -> int:
    try:
        return int(request.path_params["schema_id"])
    except ValueError as exc:
        raise RegistryError(404, 40403, "Schema not found.") from exc


async def _body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in ACCEPTED_CONTENT_TYPES:
        raise RegistryError(
            415,
            415,
            f"HTTP 415 Unsupported Media Type: {content_type}; send one of "
            + ", ".join(sorted(ACCEPTED_CONTENT_TYPES)),
        )
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise RegistryError(400, 400, f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RegistryError(422, 422, "the request body must be a JSON object")
    return body


async def _schema_from(request: Request) -> compat.ParsedSchema:
    body = await _body(request)
    if body.get("references"):
        raise RegistryError(
            422, 42201, "Invalid schema: schema references are not supported by this registry"
        )
    text, schema_type = body.get("schema"), body.get("schemaType")
    if not isinstance(text, str) or not (schema_type is None or isinstance(schema_type, str)):
        raise RegistryError(
            422, 42201, "Invalid schema: 'schema' must be a string, 'schemaType' a string or absent"
        )
    try:
        return compat.parse_schema(text, schema_type)
    except compat.InvalidSchemaError as exc:
        raise RegistryError(422, 42201, f"Invalid schema: {exc}") from exc


def _level_from(body: dict[str, Any]) -> str:
    level = body.get("compatibility", body.get("compatibilityLevel"))
    normalised = level.upper() if isinstance(level, str) else level
    if not compat.is_valid_level(normalised):
        raise RegistryError(
            422,
            42203,
            f"Invalid compatibility level {level!r}; valid levels are "
            + ", ".join(compat.COMPATIBILITY_LEVELS),
        )
    assert isinstance(normalised, str)
    return normalised


# Response shapes ------------------------------------------------------------------------


def _schema_fields(schema_type: str, text: str) -> dict[str, Any]:
    # Confluent omits schemaType for AVRO, and clients default a missing one to AVRO.
    fields: dict[str, Any] = {"schema": text}
    if schema_type != compat.AVRO:
        fields["schemaType"] = schema_type
    return fields


def _version_body(row: SubjectVersion) -> dict[str, Any]:
    return {
        "subject": row.subject,
        "version": row.version,
        "id": row.schema_id,
        "guid": row.guid,
        **_schema_fields(row.schema_type, row.text),
    }


def _raw(text: str) -> Response:
    return Response(text, media_type=MEDIA_TYPE)


# Endpoints ------------------------------------------------------------------------------


async def root(request: Request) -> Response:
    """``GET /``: an empty object; the health check."""
    return RegistryResponse({})


async def schema_types(request: Request) -> Response:
    """``GET /schemas/types``."""
    return RegistryResponse(list(compat.SUPPORTED_SCHEMA_TYPES))


async def contexts(request: Request) -> Response:
    """``GET /contexts``: only the default context exists."""
    return RegistryResponse(["."])


async def schema_by_id(request: Request) -> Response:
    """``GET /schemas/ids/{id}``."""
    schema = await _store(request).schema_by_id(_schema_id(request))
    return RegistryResponse(
        {**_schema_fields(schema.schema_type, schema.text), "guid": schema.guid}
    )


async def raw_schema_by_id(request: Request) -> Response:
    """``GET /schemas/ids/{id}/schema``: the schema text itself."""
    schema = await _store(request).schema_by_id(_schema_id(request))
    return _raw(schema.text)


async def schema_by_guid(request: Request) -> Response:
    """``GET /schemas/guids/{guid}``."""
    schema = await _store(request).schema_by_guid(request.path_params["guid"])
    return RegistryResponse(
        {**_schema_fields(schema.schema_type, schema.text), "id": schema.id, "guid": schema.guid}
    )


async def schema_versions(request: Request) -> Response:
    """``GET /schemas/ids/{id}/versions``: ``[{subject, version}]``."""
    pairs = await _versions_of_schema(request)
    return RegistryResponse(_page(request, [{"subject": s, "version": v} for s, v in pairs]))


async def schema_subjects(request: Request) -> Response:
    """``GET /schemas/ids/{id}/subjects``."""
    pairs = await _versions_of_schema(request)
    return RegistryResponse(_page(request, sorted({s for s, _ in pairs})))


async def _versions_of_schema(request: Request) -> list[tuple[str, int]]:
    return await _store(request).versions_of_schema(
        _schema_id(request),
        subject=request.query_params.get("subject"),
        deleted=_flag(request, "deleted"),
    )


async def list_subjects(request: Request) -> Response:
    """``GET /subjects`` (``deleted``, ``deleted_only``, ``subjectPrefix``)."""
    prefix = request.query_params.get("subjectPrefix", "")
    subjects = await _store(request).subjects(
        prefix="" if prefix == ":*:" else prefix,
        deleted=_flag(request, "deleted"),
        deleted_only=_flag(request, "deleted_only"),
    )
    return RegistryResponse(_page(request, subjects))


async def lookup(request: Request) -> Response:
    """``POST /subjects/{subject}``: which version of the subject holds this schema."""
    schema = await _schema_from(request)
    row = await _store(request).lookup(_subject(request), schema, deleted=_flag(request, "deleted"))
    return RegistryResponse(_version_body(row))


async def delete_subject(request: Request) -> Response:
    """``DELETE /subjects/{subject}``: soft, or ``permanent=true`` after a soft delete."""
    versions = await _store(request).delete_subject(
        _subject(request), permanent=_flag(request, "permanent")
    )
    return RegistryResponse(versions)


async def list_versions(request: Request) -> Response:
    """``GET /subjects/{subject}/versions``."""
    versions = await _store(request).versions(
        _subject(request),
        deleted=_flag(request, "deleted"),
        deleted_only=_flag(request, "deleted_only"),
    )
    return RegistryResponse(_page(request, versions))


async def register(request: Request) -> Response:
    """``POST /subjects/{subject}/versions``: registers a schema, returns its id."""
    schema = await _schema_from(request)
    row = await _store(request).register(_subject(request), schema)
    return RegistryResponse(
        {"id": row.schema_id, "guid": row.guid, "subject": row.subject, "version": row.version}
    )


async def get_version(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}``."""
    row = await _store(request).version(
        _subject(request), _version(request), deleted=_flag(request, "deleted")
    )
    return RegistryResponse(_version_body(row))


async def raw_version(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}/schema``: the schema text itself."""
    row = await _store(request).version(
        _subject(request), _version(request), deleted=_flag(request, "deleted")
    )
    return _raw(row.text)


async def referenced_by(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}/referencedby``: always empty here."""
    await _store(request).version(_subject(request), _version(request), deleted=True)
    return RegistryResponse([])


async def delete_version(request: Request) -> Response:
    """``DELETE /subjects/{subject}/versions/{version}``."""
    version = await _store(request).delete_version(
        _subject(request), _version(request), permanent=_flag(request, "permanent")
    )
    return RegistryResponse(version)


async def check_version(request: Request) -> Response:
    """``POST /compatibility/subjects/{subject}/versions/{version}``."""
    version = _version(request)
    schema = await _schema_from(request)
    messages = await _store(request).check(_subject(request), version, schema)
    return _compatibility(request, messages)


async def check_all_versions(request: Request) -> Response:
    """``POST /compatibility/subjects/{subject}/versions``: the check registration runs."""
    schema = await _schema_from(request)
    messages = await _store(request).check_all(_subject(request), schema)
    return _compatibility(request, messages)


def _compatibility(request: Request, messages: list[str]) -> Response:
    body: dict[str, Any] = {"is_compatible": not messages}
    if _flag(request, "verbose"):
        body["messages"] = messages
    return RegistryResponse(body)


async def get_config(request: Request) -> Response:
    """``GET /config`` and ``GET /config/{subject}``.

    A subject without its own level is 40408, unless ``defaultToGlobal=true``.
    """
    store, subject = _store(request), request.path_params.get("subject")
    if subject is None or _flag(request, "defaultToGlobal"):
        level = await store.effective_level(subject or GLOBAL)
    else:
        level = await store.config(subject) or _raise(config_not_found(subject))
    return RegistryResponse({"compatibilityLevel": level})


async def put_config(request: Request) -> Response:
    """``PUT /config`` and ``PUT /config/{subject}``: ``{"compatibility": LEVEL}``."""
    level = _level_from(await _body(request))
    await _store(request).set_config(level, request.path_params.get("subject", GLOBAL))
    return RegistryResponse({"compatibility": level})


async def delete_config(request: Request) -> Response:
    """``DELETE /config`` (back to BACKWARD) and ``DELETE /config/{subject}``.

    Returns the removed level; a subject without its own level is 40408.
    """
    subject = request.path_params.get("subject")
    removed = await _store(request).delete_config(subject or GLOBAL)
    if subject is None:
        return RegistryResponse({"compatibilityLevel": removed or compat.DEFAULT_COMPATIBILITY})
    return RegistryResponse({"compatibilityLevel": removed or _raise(config_not_found(subject))})


def _raise(error: RegistryError) -> NoReturn:
    raise error


async def get_mode(request: Request) -> Response:
    """``GET /mode`` and ``GET /mode/{subject}``: always READWRITE."""
    return RegistryResponse({"mode": READWRITE})


async def put_mode(request: Request) -> Response:
    """``PUT /mode`` and ``PUT /mode/{subject}``: only READWRITE is accepted."""
    mode = (await _body(request)).get("mode")
    if mode != READWRITE:
        raise RegistryError(
            422, 42204, f"Invalid mode {mode!r}: this registry only supports READWRITE"
        )
    return RegistryResponse({"mode": READWRITE})


ROUTES = [
    Route("/", root, methods=["GET"]),
    Route("/contexts", contexts, methods=["GET"]),
    Route("/schemas/types", schema_types, methods=["GET"]),
    Route("/schemas/ids/{schema_id}", schema_by_id, methods=["GET"]),
    Route("/schemas/ids/{schema_id}/schema", raw_schema_by_id, methods=["GET"]),
    Route("/schemas/ids/{schema_id}/versions", schema_versions, methods=["GET"]),
    Route("/schemas/ids/{schema_id}/subjects", schema_subjects, methods=["GET"]),
    Route("/schemas/guids/{guid}", schema_by_guid, methods=["GET"]),
    Route("/subjects", list_subjects, methods=["GET"]),
    Route("/subjects/{subject}", lookup, methods=["POST"]),
    Route("/subjects/{subject}", delete_subject, methods=["DELETE"]),
    Route("/subjects/{subject}/versions", list_versions, methods=["GET"]),
    Route("/subjects/{subject}/versions", register, methods=["POST"]),
    Route("/subjects/{subject}/versions/{version}", get_version, methods=["GET"]),
    Route("/subjects/{subject}/versions/{version}", delete_version, methods=["DELETE"]),
    Route("/subjects/{subject}/versions/{version}/schema", raw_version, methods=["GET"]),
    Route("/subjects/{subject}/versions/{version}/referencedby", referenced_by, methods=["GET"]),
    Route("/compatibility/subjects/{subject}/versions", check_all_versions, methods=["POST"]),
    Route("/compatibility/subjects/{subject}/versions/{version}", check_version, methods=["POST"]),
    Route("/config", get_config, methods=["GET"]),
    Route("/config", put_config, methods=["PUT"]),
    Route("/config", delete_config, methods=["DELETE"]),
    Route("/config/{subject}", get_config, methods=["GET"]),
    Route("/config/{subject}", put_config, methods=["PUT"]),
    Route("/config/{subject}", delete_config, methods=["DELETE"]),
    Route("/mode", get_mode, methods=["GET"]),
    Route("/mode", put_mode, methods=["PUT"]),
    Route("/mode/{subject}", get_mode, methods=["GET"]),
    Route("/mode/{subject}", put_mode, methods=["PUT"]),
]
"""Every endpoint, in the order Starlette matches them."""
