"""Avro uuid fields read as the text on the wire, not as ``uuid.UUID``.

fastavro turns every uuid field it reads into a ``uuid.UUID`` in Python: for a job
envelope, a fifth of its decoding time. The worker's intake and the ledger read each
envelope's ids as text instead (``Serde.decode(..., text_uuids=True)``, the ledger's
``EnvelopeDecoder``) and check the text themselves, which is what they store and
compare anyway. :func:`parsed_pair` parses a (writer, reader) pair for both.
"""

from __future__ import annotations

import uuid
from typing import Any

import fastavro


def text_uuid_schema(schema: Any) -> Any:
    """A parsed-JSON Avro schema with the uuid logical type dropped from its strings, so
    fastavro reads those fields as the text on the wire (``uuid`` on a ``fixed`` stays).
    """
    if isinstance(schema, list):
        return [text_uuid_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    plain = schema.get("logicalType") == "uuid" and schema.get("type") == "string"
    return {
        name: text_uuid_schema(value)
        for name, value in schema.items()
        if not (plain and name == "logicalType")
    }


def uuids_as_text(value: Any) -> Any:
    """``value`` with every ``uuid.UUID`` in it as its text (the slow path's records)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {name: uuids_as_text(item) for name, item in value.items()}
    if isinstance(value, list):
        return [uuids_as_text(item) for item in value]
    return value


def parsed_pair(writer: Any, reader: Any, *, text_uuids: bool) -> tuple[Any, Any]:
    """The parsed (writer, reader) pair of two JSON schemas for fastavro, their uuid
    fields read as text when ``text_uuids``; the reader None when it is the writer
    (nothing to resolve: a third cheaper), or when ``reader`` is None."""
    if text_uuids:
        writer = text_uuid_schema(writer)
        reader = None if reader is None else text_uuid_schema(reader)
    parsed_writer = fastavro.parse_schema(writer)
    parsed_reader = None if reader is None else fastavro.parse_schema(reader)
    return parsed_writer, None if parsed_reader == parsed_writer else parsed_reader


__all__ = ["parsed_pair", "text_uuid_schema", "uuids_as_text"]
