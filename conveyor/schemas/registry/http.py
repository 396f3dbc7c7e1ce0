"""The registry's HTTP layer: request parsing, response shapes and error handlers.

Requests are read here (body and media type, path and query parameters) and turned
into the values the endpoints in ``app`` pass to the store; responses carry
``application/vnd.schemaregistry.v1+json``; and every failure, ours, Starlette's or
Postgres's, becomes Confluent's ``{"error_code": ..., "message": ...}`` body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from conveyor.schemas.registry import compat
from conveyor.schemas.registry.store import RegistryError, RegistryStore, SubjectVersion

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
_MAX_VERSION = 2**31 - 1
_MAX_SCHEMA_ID = 2**31 - 1


class RegistryResponse(JSONResponse):
    """A JSON response with the Schema Registry media type."""

    media_type = MEDIA_TYPE


# Error handlers -------------------------------------------------------------------------


async def registry_error(request: Request, exc: Exception) -> Response:
    """Renders a ``RegistryError`` with its own status and Confluent error code.

    Args:
        request: The failed request.
        exc: The ``RegistryError`` raised.

    Returns:
        The error response.
    """
    assert isinstance(exc, RegistryError)
    return error_response(exc.status, exc.error_code, exc.message)


async def http_error(request: Request, exc: Exception) -> Response:
    """Renders Starlette's ``HTTPException`` (404 route, 405 method) in Confluent's shape.

    Args:
        request: The failed request.
        exc: The ``HTTPException`` raised; its headers (``Allow``) are kept.

    Returns:
        The error response, with the HTTP status doubling as the error code.
    """
    assert isinstance(exc, HTTPException)
    response = error_response(
        exc.status_code, exc.status_code, f"HTTP {exc.status_code} {exc.detail}"
    )
    response.headers.update(exc.headers or {})
    return response


async def store_error(request: Request, exc: Exception) -> Response:
    """Logs a Postgres or connection failure and renders it as Confluent's 50001.

    Args:
        request: The failed request.
        exc: The database or network error raised.

    Returns:
        A 500 error response.
    """
    log.error("registry store error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(500, 50001, f"Error in the backend data store: {exc}")


def error_response(status: int, code: int, message: str) -> Response:
    """A Confluent error body.

    Args:
        status: The HTTP status.
        code: Confluent's ``error_code``.
        message: The human-readable ``message``.

    Returns:
        ``{"error_code": code, "message": message}`` with the registry media type.
    """
    return RegistryResponse({"error_code": code, "message": message}, status_code=status)


# Request parsing ------------------------------------------------------------------------


def store_of(request: Request) -> RegistryStore:
    """The store the app's lifespan opened.

    Args:
        request: Any request to the registry app.

    Returns:
        The app's ``RegistryStore``.
    """
    store: RegistryStore = request.app.state.store
    return store


def flag(request: Request, name: str) -> bool:
    """A boolean query parameter: true only for ``true``, in any case.

    Args:
        request: The request.
        name: The query parameter.

    Returns:
        Whether the parameter is ``true``; absent or anything else is false.
    """
    # Java's Boolean.parseBoolean semantics; confluent-kafka sends both "true" and "True".
    return request.query_params.get(name, "").lower() == "true"


def page(request: Request, items: list[Any]) -> list[Any]:
    """Applies the ``offset`` and ``limit`` query parameters to a list.

    Args:
        request: The request.
        items: The whole list.

    Returns:
        The requested slice; a negative ``limit`` means no limit, and unparsable
        values leave the list whole.
    """
    try:
        offset = max(int(request.query_params.get("offset", "0")), 0)
        limit = int(request.query_params.get("limit", "-1"))
    except ValueError:
        return items
    return items[offset:] if limit < 0 else items[offset : offset + limit]


def subject_of(request: Request) -> str:
    """The ``{subject}`` path parameter.

    Args:
        request: A request to a route with ``{subject}``.

    Returns:
        The subject name.
    """
    subject: str = request.path_params["subject"]
    return subject


def version_of(request: Request) -> int | None:
    """The ``{version}`` path parameter: ``None`` for ``latest`` (or -1), else 1..2^31-1.

    Args:
        request: A request to a route with ``{version}``.

    Returns:
        The version number, or ``None`` for the latest.

    Raises:
        RegistryError: 42202 if the version is out of range or not a number.
    """
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


def schema_id_of(request: Request) -> int:
    """The ``{schema_id}`` path parameter.

    Args:
        request: A request to a route with ``{schema_id}``.

    Returns:
        The schema id.

    Raises:
        RegistryError: 40403 if the id is not a number or lies outside the ids the store
            can hold (a 32-bit int, as in Confluent's), as no such schema exists.
    """
    try:
        schema_id = int(request.path_params["schema_id"])
    except ValueError as exc:
        raise RegistryError(404, 40403, "Schema not found.") from exc
    if not -_MAX_SCHEMA_ID - 1 <= schema_id <= _MAX_SCHEMA_ID:
        # A Confluent header of random bytes names ids up to 2**32 - 1: unknown, not a 500.
        raise RegistryError(404, 40403, "Schema not found.")
    return schema_id


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``.

    Args:
        request: The request.

    Returns:
        The decoded object.

    Raises:
        RegistryError: 415 for a content type outside ``ACCEPTED_CONTENT_TYPES``,
            400 for a body that is not JSON, 422 for JSON that is not an object.
    """
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


async def schema_from(request: Request) -> compat.ParsedSchema:
    """The schema in a ``{"schema": ..., "schemaType": ...}`` request body.

    Args:
        request: The request.

    Returns:
        The parsed schema.

    Raises:
        RegistryError: 42201 for references, malformed fields or an invalid schema,
            or as ``json_body`` does.
    """
    body = await json_body(request)
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


def level_from(body: dict[str, Any]) -> str:
    """The compatibility level in a config body (``compatibility`` or ``compatibilityLevel``).

    Args:
        body: The request body.

    Returns:
        The level, upper-cased.

    Raises:
        RegistryError: 42203 if the level is missing or unknown.
    """
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


def schema_fields(schema_type: str, text: str) -> dict[str, Any]:
    """The ``schema`` and ``schemaType`` fields of a schema response.

    Args:
        schema_type: The schema's type.
        text: The schema text.

    Returns:
        ``{"schema": text}``, plus ``schemaType`` unless the type is AVRO.
    """
    # Confluent omits schemaType for AVRO, and clients default a missing one to AVRO.
    fields: dict[str, Any] = {"schema": text}
    if schema_type != compat.AVRO:
        fields["schemaType"] = schema_type
    return fields


def version_body(row: SubjectVersion) -> dict[str, Any]:
    """A subject version as the ``/subjects/{subject}/versions/{version}`` body.

    Args:
        row: The subject version.

    Returns:
        ``subject``, ``version``, ``id``, ``guid`` and the schema fields.
    """
    return {
        "subject": row.subject,
        "version": row.version,
        "id": row.schema_id,
        "guid": row.guid,
        **schema_fields(row.schema_type, row.text),
    }


def compatibility_response(request: Request, messages: list[str]) -> Response:
    """The result of a compatibility check.

    Args:
        request: The check request; ``verbose=true`` adds the messages.
        messages: Why the schema is incompatible; empty if it is compatible.

    Returns:
        ``{"is_compatible": ...}``, with ``messages`` when verbose.
    """
    body: dict[str, Any] = {"is_compatible": not messages}
    if flag(request, "verbose"):
        body["messages"] = messages
    return RegistryResponse(body)


def text_response(text: str) -> Response:
    """A schema's text as the body itself, for the ``.../schema`` endpoints.

    Args:
        text: The schema text.

    Returns:
        The text with the registry media type.
    """
    return Response(text, media_type=MEDIA_TYPE)
