"""The registry's REST API: the Confluent Schema Registry endpoints Avro clients use.

Responses carry ``application/vnd.schemaregistry.v1+json``; errors are
``{"error_code": ..., "message": ...}`` with Confluent's codes, so confluent-kafka's
``SchemaRegistryClient`` and serde work against it unchanged. Query parameters newer
clients send (``normalize``, ``format``, ``subject`` on id lookups) are accepted;
identity is always by normalised JSON, so ``normalize`` changes nothing. Request
parsing, response shapes and the error handlers are in ``http``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conveyor import db
from conveyor.schemas.registry import compat
from conveyor.schemas.registry.http import (
    RegistryResponse,
    compatibility_response,
    flag,
    http_error,
    json_body,
    level_from,
    page,
    registry_error,
    schema_fields,
    schema_from,
    schema_id_of,
    store_error,
    store_of,
    subject_of,
    text_response,
    version_body,
    version_of,
)
from conveyor.schemas.registry.store import GLOBAL, RegistryError, RegistryStore, config_not_found
from conveyor.settings import Settings

READWRITE = "READWRITE"


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
            RegistryError: registry_error,
            HTTPException: http_error,
            asyncpg.PostgresError: store_error,
            asyncpg.InterfaceError: store_error,
            OSError: store_error,
        },
    )


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
    schema = await store_of(request).schema_by_id(schema_id_of(request))
    return RegistryResponse({**schema_fields(schema.schema_type, schema.text), "guid": schema.guid})


async def raw_schema_by_id(request: Request) -> Response:
    """``GET /schemas/ids/{id}/schema``: the schema text itself."""
    schema = await store_of(request).schema_by_id(schema_id_of(request))
    return text_response(schema.text)


async def schema_by_guid(request: Request) -> Response:
    """``GET /schemas/guids/{guid}``."""
    schema = await store_of(request).schema_by_guid(request.path_params["guid"])
    return RegistryResponse(
        {**schema_fields(schema.schema_type, schema.text), "id": schema.id, "guid": schema.guid}
    )


async def schema_versions(request: Request) -> Response:
    """``GET /schemas/ids/{id}/versions``: ``[{subject, version}]``."""
    pairs = await _versions_of_schema(request)
    return RegistryResponse(page(request, [{"subject": s, "version": v} for s, v in pairs]))


async def schema_subjects(request: Request) -> Response:
    """``GET /schemas/ids/{id}/subjects``."""
    pairs = await _versions_of_schema(request)
    return RegistryResponse(page(request, sorted({s for s, _ in pairs})))


async def _versions_of_schema(request: Request) -> list[tuple[str, int]]:
    return await store_of(request).versions_of_schema(
        schema_id_of(request),
        subject=request.query_params.get("subject"),
        deleted=flag(request, "deleted"),
    )


async def list_subjects(request: Request) -> Response:
    """``GET /subjects`` (``deleted``, ``deleted_only``, ``subjectPrefix``)."""
    prefix = request.query_params.get("subjectPrefix", "")
    subjects = await store_of(request).subjects(
        prefix="" if prefix == ":*:" else prefix,
        deleted=flag(request, "deleted"),
        deleted_only=flag(request, "deleted_only"),
    )
    return RegistryResponse(page(request, subjects))


async def lookup(request: Request) -> Response:
    """``POST /subjects/{subject}``: which version of the subject holds this schema."""
    schema = await schema_from(request)
    row = await store_of(request).lookup(
        subject_of(request), schema, deleted=flag(request, "deleted")
    )
    return RegistryResponse(version_body(row))


async def delete_subject(request: Request) -> Response:
    """``DELETE /subjects/{subject}``: soft, or ``permanent=true`` after a soft delete."""
    versions = await store_of(request).delete_subject(
        subject_of(request), permanent=flag(request, "permanent")
    )
    return RegistryResponse(versions)


async def list_versions(request: Request) -> Response:
    """``GET /subjects/{subject}/versions``."""
    versions = await store_of(request).versions(
        subject_of(request),
        deleted=flag(request, "deleted"),
        deleted_only=flag(request, "deleted_only"),
    )
    return RegistryResponse(page(request, versions))


async def register(request: Request) -> Response:
    """``POST /subjects/{subject}/versions``: registers a schema, returns its id."""
    schema = await schema_from(request)
    row = await store_of(request).register(subject_of(request), schema)
    return RegistryResponse(
        {"id": row.schema_id, "guid": row.guid, "subject": row.subject, "version": row.version}
    )


async def get_version(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}``."""
    row = await store_of(request).version(
        subject_of(request), version_of(request), deleted=flag(request, "deleted")
    )
    return RegistryResponse(version_body(row))


async def raw_version(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}/schema``: the schema text itself."""
    row = await store_of(request).version(
        subject_of(request), version_of(request), deleted=flag(request, "deleted")
    )
    return text_response(row.text)


async def referenced_by(request: Request) -> Response:
    """``GET /subjects/{subject}/versions/{version}/referencedby``: always empty here."""
    await store_of(request).version(subject_of(request), version_of(request), deleted=True)
    return RegistryResponse([])


async def delete_version(request: Request) -> Response:
    """``DELETE /subjects/{subject}/versions/{version}``."""
    version = await store_of(request).delete_version(
        subject_of(request), version_of(request), permanent=flag(request, "permanent")
    )
    return RegistryResponse(version)


async def check_version(request: Request) -> Response:
    """``POST /compatibility/subjects/{subject}/versions/{version}``."""
    version = version_of(request)
    schema = await schema_from(request)
    messages = await store_of(request).check(subject_of(request), version, schema)
    return compatibility_response(request, messages)


async def check_all_versions(request: Request) -> Response:
    """``POST /compatibility/subjects/{subject}/versions``: the check registration runs."""
    schema = await schema_from(request)
    messages = await store_of(request).check_all(subject_of(request), schema)
    return compatibility_response(request, messages)


async def get_config(request: Request) -> Response:
    """``GET /config`` and ``GET /config/{subject}``.

    A subject without its own level is 40408, unless ``defaultToGlobal=true``.
    """
    store, subject = store_of(request), request.path_params.get("subject")
    if subject is None or flag(request, "defaultToGlobal"):
        level = await store.effective_level(subject or GLOBAL)
    else:
        level = await store.config(subject) or _raise(config_not_found(subject))
    return RegistryResponse({"compatibilityLevel": level})


async def put_config(request: Request) -> Response:
    """``PUT /config`` and ``PUT /config/{subject}``: ``{"compatibility": LEVEL}``."""
    level = level_from(await json_body(request))
    await store_of(request).set_config(level, request.path_params.get("subject", GLOBAL))
    return RegistryResponse({"compatibility": level})


async def delete_config(request: Request) -> Response:
    """``DELETE /config`` (back to BACKWARD) and ``DELETE /config/{subject}``.

    Returns the removed level; a subject without its own level is 40408.
    """
    subject = request.path_params.get("subject")
    removed = await store_of(request).delete_config(subject or GLOBAL)
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
    mode = (await json_body(request)).get("mode")
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
