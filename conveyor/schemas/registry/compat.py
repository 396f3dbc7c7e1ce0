"""Avro schema parsing, identity and compatibility rules of the registry.

A registered schema is identified by the sha256 of its normalised JSON: key order and
whitespace do not matter, but everything else does. The Avro *parsing canonical
form* would be too coarse for identity: it strips defaults, docs, aliases and logical
types, so a schema that only adds a default (which changes its compatibility) or a
``timestamp-millis`` (which changes what a reader decodes) would collapse into an
older, different schema.

Compatibility follows Confluent's levels and uses the ``avro`` package's
``ReaderWriterCompatibilityChecker``: BACKWARD means the new schema, as reader, can
read data written with an earlier one; FORWARD the reverse; FULL both; the
``_TRANSITIVE`` variants check every live version instead of only the latest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from collections.abc import Sequence
from typing import Any

import avro.compatibility
import avro.errors
import avro.schema
import fastavro.schema

AVRO = "AVRO"
SUPPORTED_SCHEMA_TYPES = (AVRO,)

NONE = "NONE"
BACKWARD = "BACKWARD"
BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
FORWARD = "FORWARD"
FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
FULL = "FULL"
FULL_TRANSITIVE = "FULL_TRANSITIVE"
COMPATIBILITY_LEVELS = (
    NONE,
    BACKWARD,
    BACKWARD_TRANSITIVE,
    FORWARD,
    FORWARD_TRANSITIVE,
    FULL,
    FULL_TRANSITIVE,
)
DEFAULT_COMPATIBILITY = BACKWARD

_PARSED_CACHE_SIZE = 512


class InvalidSchemaError(ValueError):
    """The submitted text is not a valid schema of a supported type."""


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedSchema:
    """A schema accepted by the registry.

    Attributes:
        text: The schema as stored and served: the submitted JSON, compacted.
        fingerprint: sha256 hex digest of the normalised JSON; equal for equal schemas.
        avro: The schema parsed by the ``avro`` package, for compatibility checks.
        schema_type: Always ``"AVRO"``; the only type this registry supports.
    """

    text: str
    fingerprint: str
    avro: Any
    schema_type: str = AVRO


@dataclasses.dataclass(frozen=True, slots=True)
class PreviousVersion:
    """A live version of a subject that a new schema is checked against.

    Attributes:
        version: The version number, quoted in incompatibility messages.
        avro: That version's schema parsed by the ``avro`` package.
    """

    version: int
    avro: Any


def normalised_json(document: Any) -> str:
    """Returns the JSON text that identifies a schema: sorted keys, no whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(document: Any) -> str:
    """Returns the sha256 hex digest of the normalised JSON of a schema document."""
    return hashlib.sha256(normalised_json(document).encode("utf-8")).hexdigest()


def parse_schema(text: str, schema_type: str | None = AVRO) -> ParsedSchema:
    """Validates a submitted schema and computes its stored text and fingerprint.

    The schema must parse with both the ``avro`` package (compatibility checks) and
    fastavro (the serde every conveyor client uses), so the registry never accepts a
    schema its own clients cannot load.

    Args:
        text: The schema JSON, as sent in the ``schema`` field of a request.
        schema_type: The ``schemaType`` field; ``None`` means AVRO, as in Confluent.

    Returns:
        The parsed schema.

    Raises:
        InvalidSchemaError: The type is not AVRO, the text is not JSON, or not valid Avro.
    """
    kind = (schema_type or AVRO).upper()
    if kind not in SUPPORTED_SCHEMA_TYPES:
        raise InvalidSchemaError(
            f"schema type {schema_type!r} is not supported: this registry stores AVRO schemas only"
        )
    if not isinstance(text, str) or not text.strip():
        raise InvalidSchemaError("empty schema")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidSchemaError(f"invalid schema: not JSON: {exc}") from exc
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    try:
        parsed = _parse_avro(compact)
        fastavro.schema.parse_schema(document)
    # The parsers raise a variety of exception types (SchemaParseException, KeyError,
    # TypeError, AttributeError...) for malformed input; all of them mean "invalid".
    except Exception as exc:
        raise InvalidSchemaError(f"invalid Avro schema: {type(exc).__name__}: {exc}") from exc
    return ParsedSchema(text=compact, fingerprint=fingerprint(document), avro=parsed)


def stored_schema(text: str) -> Any:
    """Parses a schema read back from the store (cached: stored schemas never change)."""
    return _parse_avro(text)


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def _parse_avro(text: str) -> Any:
    with warnings.catch_warnings():
        # An unknown logicalType is legal Avro (readers fall back to the base type);
        # the avro package warns about it, which is not the registry's business.
        warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
        return avro.schema.parse(text)


def is_valid_level(level: object) -> bool:
    """True when ``level`` is one of Confluent's compatibility level names."""
    return isinstance(level, str) and level in COMPATIBILITY_LEVELS


def check_compatibility(level: str, new: Any, previous: Sequence[PreviousVersion]) -> list[str]:
    """Checks a new schema against a subject's live versions under a compatibility level.

    Args:
        level: One of :data:`COMPATIBILITY_LEVELS`.
        new: The candidate schema parsed by the ``avro`` package.
        previous: The live versions, oldest first; non-transitive levels use the last.

    Returns:
        One message per incompatibility found; empty when the schema is compatible.

    Raises:
        ValueError: ``level`` is not a compatibility level.
    """
    if not is_valid_level(level):
        raise ValueError(f"unknown compatibility level {level!r}")
    if level == NONE or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    messages: list[str] = []
    for old in against:
        if base in (BACKWARD, FULL):
            messages.extend(
                _check(
                    new,
                    old.avro,
                    f"the new schema cannot read data written with version {old.version} ({level})",
                )
            )
        if base in (FORWARD, FULL):
            messages.extend(
                _check(
                    old.avro,
                    new,
                    f"version {old.version} cannot read data written with the new schema ({level})",
                )
            )
    return messages


def _check(reader: Any, writer: Any, what: str) -> list[str]:
    # The checker memoises by object identity, so each check gets a fresh one.
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
    details = "; ".join(sorted(result.messages))
    where = ", ".join(sorted(result.locations))
    return [f"{what}: {kinds} at {where}: {details}"]
