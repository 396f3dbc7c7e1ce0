"""The registry's schema identity and Confluent compatibility levels, without services."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.schemas.registry import compat


def record(*fields: dict[str, Any], name: str = "Order") -> str:
    """An Avro record schema with the given fields, as registry clients send it."""
    return json.dumps({"type": "record", "name": name, "fields": list(fields)})


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def parse(text: str) -> Any:
    return compat.parse_schema(text).avro


def history(*texts: str) -> list[compat.PreviousVersion]:
    """Live versions 1..n of a subject, oldest first."""
    return [compat.PreviousVersion(n, parse(t)) for n, t in enumerate(texts, start=1)]


ID = field("id", "string")
V1 = record(ID)
WITH_DEFAULT = record(ID, field("qty", "int", default=0))
WITHOUT_DEFAULT = record(ID, field("qty", "int"))
INT_AMOUNT = record(field("amount", "int"))
LONG_AMOUNT = record(field("amount", "long"))
ALL_LEVELS = set(compat.COMPATIBILITY_LEVELS)

# (new schema, previous schema) -> the levels under which the change is accepted.
CASES = [
    pytest.param(
        WITH_DEFAULT,
        V1,
        ALL_LEVELS,
        id="add-field-with-default-is-fully-compatible",
    ),
    pytest.param(
        WITHOUT_DEFAULT,
        V1,
        {"NONE", "FORWARD", "FORWARD_TRANSITIVE"},
        id="add-field-without-default-breaks-backward",
    ),
    pytest.param(
        V1,
        WITHOUT_DEFAULT,
        {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE"},
        id="remove-field-without-default-breaks-forward",
    ),
    pytest.param(
        V1,
        WITH_DEFAULT,
        ALL_LEVELS,
        id="remove-field-with-default-is-fully-compatible",
    ),
    pytest.param(
        LONG_AMOUNT,
        INT_AMOUNT,
        {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE"},
        id="int-to-long-promotion-is-backward-only",
    ),
    pytest.param(
        record(field("id", "int")),
        V1,
        {"NONE"},
        id="changing-a-field-type-breaks-both-directions",
    ),
]


@pytest.mark.parametrize(("new", "old", "accepted"), CASES)
def test_each_level_accepts_exactly_the_changes_avro_resolution_allows(
    new: str, old: str, accepted: set[str]
) -> None:
    actual = {
        level
        for level in compat.COMPATIBILITY_LEVELS
        if not compat.check_compatibility(level, parse(new), history(old))
    }

    assert actual == accepted


def test_backward_reports_the_field_the_new_schema_cannot_fill() -> None:
    messages = compat.check_compatibility("BACKWARD", parse(WITHOUT_DEFAULT), history(V1))

    assert len(messages) == 1
    assert "version 1" in messages[0]
    assert "reader_field_missing_default_value" in messages[0]
    assert "qty" in messages[0]


def test_backward_checks_only_the_latest_version_and_transitive_checks_all() -> None:
    """v3 drops the default v2 gave to qty: v2 data has qty, v1 data does not."""
    versions = history(V1, WITH_DEFAULT)

    assert compat.check_compatibility("BACKWARD", parse(WITHOUT_DEFAULT), versions) == []
    transitive = compat.check_compatibility("BACKWARD_TRANSITIVE", parse(WITHOUT_DEFAULT), versions)
    assert len(transitive) == 1
    assert "version 1" in transitive[0]


def test_forward_transitive_checks_that_every_old_reader_can_read_new_data() -> None:
    """v2 gave qty a default, v1 had none: removing qty only breaks v1's readers."""
    versions = history(WITHOUT_DEFAULT, WITH_DEFAULT)

    assert compat.check_compatibility("FORWARD", parse(V1), versions) == []
    transitive = compat.check_compatibility("FORWARD_TRANSITIVE", parse(V1), versions)
    assert len(transitive) == 1
    assert "version 1 cannot read data written with the new schema" in transitive[0]


def test_full_reports_both_directions_when_both_break() -> None:
    messages = compat.check_compatibility("FULL", parse(record(field("id", "int"))), history(V1))

    assert len(messages) == 2


def test_a_first_version_is_compatible_under_every_level() -> None:
    results = [
        compat.check_compatibility(level, parse(V1), []) for level in compat.COMPATIBILITY_LEVELS
    ]

    assert results == [[]] * len(compat.COMPATIBILITY_LEVELS)


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="SIDEWAYS"):
        compat.check_compatibility("SIDEWAYS", parse(V1), history(V1))


def test_fingerprint_ignores_whitespace_and_key_order() -> None:
    compact = '{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}'
    spread = """
        {
          "fields": [ { "type": "string", "name": "id" } ],
          "name": "Order",
          "type": "record"
        }
    """

    assert compat.parse_schema(spread).fingerprint == compat.parse_schema(compact).fingerprint


def test_fingerprint_keeps_field_order_defaults_and_logical_types() -> None:
    """The parsing canonical form would drop defaults and logical types: identity must not."""
    base = compat.parse_schema(record(ID, field("qty", "int")))
    variants = [
        record(field("qty", "int"), ID),
        record(ID, field("qty", "int", default=0)),
        record(ID, field("qty", {"type": "int", "logicalType": "date"})),
    ]

    fingerprints = {compat.parse_schema(v).fingerprint for v in variants}

    assert base.fingerprint not in fingerprints
    assert len(fingerprints) == len(variants)


def test_stored_text_is_the_submitted_json_compacted() -> None:
    parsed = compat.parse_schema('{ "type" : "record", "name": "R", "fields" : [] }')

    assert parsed.text == '{"type":"record","name":"R","fields":[]}'
    assert parsed.schema_type == "AVRO"


@pytest.mark.parametrize(
    ("text", "schema_type", "expected"),
    [
        ("", None, "empty schema"),
        ("{not json", None, "not JSON"),
        ('{"type": "record", "name": "R"}', None, "invalid Avro schema"),
        (record(field("a", "nope")), None, "invalid Avro schema"),
        (record(field("a", "int", default="x")), None, "invalid Avro schema"),
        ('{"type": "object"}', "JSON", "AVRO schemas only"),
        ('syntax = "proto3";', "PROTOBUF", "AVRO schemas only"),
    ],
)
def test_invalid_schemas_are_refused_with_the_reason(
    text: str, schema_type: str | None, expected: str
) -> None:
    with pytest.raises(compat.InvalidSchemaError, match=expected):
        compat.parse_schema(text, schema_type)


def test_a_missing_schema_type_means_avro() -> None:
    assert compat.parse_schema(V1, None).fingerprint == compat.parse_schema(V1, "AVRO").fingerprint


def test_an_unknown_logical_type_is_accepted_without_a_warning() -> None:
    """Avro readers fall back to the base type; filterwarnings=error proves no warning leaks."""
    text = record(field("at", {"type": "long", "logicalType": "nanos-since-lunch"}))

    assert compat.parse_schema(text).text == json.dumps(json.loads(text), separators=(",", ":"))
