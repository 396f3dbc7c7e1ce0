"""conveyor's Avro contracts: the schemas every message on a conveyor topic follows.

The ``.avsc`` files next to this module are the source of truth; they are package data
loaded with :mod:`importlib.resources`. ``AttemptError`` is defined once, in
``attempt_error.avsc``, and referenced by name from the other schemas. A registry needs a
self-contained schema, so each :class:`Contract` carries ``schema_str`` with the named type
inlined at its first use (later uses stay references, as Avro requires).

Some fields are strings with a closed set of values (``priority``, ``duration``, ``kind``,
``command``, ``error_reason``). They are strings rather than Avro enums so that a new value
is not a breaking schema change for old readers; the set is checked here, when encoding,
and readers tolerate values they do not know.

Decoded records use fastavro's logical types: ``uuid`` fields come back as
:class:`uuid.UUID` and ``timestamp-millis`` fields as timezone-aware UTC
:class:`datetime.datetime`. Encoding accepts those or their plain forms (a UUID string,
epoch milliseconds).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import fastavro

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_AVRO = "application/vnd.conveyor.avro"
CONTENT_TYPE_RAW = "application/octet-stream"

NAMESPACE = "io.conveyor"

PRIORITIES = ("critical", "high", "normal", "low")
DURATIONS = ("short", "long")
EVENT_KINDS = (
    "JobStarted",
    "JobCompleted",
    "JobRetrying",
    "JobFailed",
    "JobCancelled",
    "JobProgress",
)
CONTROL_COMMANDS = ("cancel",)
ERROR_REASONS = (
    "MaxRetries",
    "Validation",
    "HandlerMissing",
    "Deserialization",
    "Permanent",
    "Timeout",
)

# Named types shared by several contracts, in dependency order.
_SHARED_FILES = ("attempt_error",)


@dataclasses.dataclass(frozen=True, eq=False)
class Contract:
    """One Avro contract: a record schema conveyor reads and writes.

    Args:
        name: The record's full name (``io.conveyor.JobEnvelope``).
        schema_str: The self-contained schema JSON, as registered with the registry.
        parsed: The schema parsed by fastavro, ready for its writers and readers.
        choices: Closed value sets of string fields, checked when encoding.
    """

    name: str
    schema_str: str
    parsed: dict[str, Any] = dataclasses.field(repr=False)
    choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_schema(
        cls, schema: Mapping[str, Any], *, choices: Mapping[str, tuple[str, ...]] | None = None
    ) -> Contract:
        """Builds a contract from a self-contained record schema.

        Args:
            schema: An Avro record schema as a JSON-like mapping.
            choices: Closed value sets of string fields, checked when encoding.

        Raises:
            ValueError: The schema is not a valid Avro record schema.
        """
        schema_str = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        try:
            parsed = fastavro.parse_schema(json.loads(schema_str))
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise ValueError(f"invalid Avro schema: {exc}") from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ValueError("a contract must be an Avro record schema")
        return cls(name=parsed["name"], schema_str=schema_str, parsed=parsed, choices=choices or {})

    @property
    def short_name(self) -> str:
        """The record name without its namespace (``JobEnvelope``)."""
        return self.name.rsplit(".", 1)[-1]

    def choice_problems(self, record: Mapping[str, Any]) -> list[str]:
        """Checks only the closed string sets; cheap enough to run on every encode.

        Returns:
            One message per field whose value is outside its set; empty when all fit.
        """
        problems = []
        for field, allowed in self.choices.items():
            value = record.get(field)
            if value is not None and value not in allowed:
                problems.append(f"{field}: {value!r} is not one of {', '.join(allowed)}")
        return problems

    def problems(self, record: Mapping[str, Any]) -> list[str]:
        """Checks a record against the schema and the closed string sets.

        Returns:
            Every problem found, one message per field (``errors[0].attempt: expected
            int, got str 'x'``); empty when the record is valid.
        """
        return record_problems(self.parsed, record) + self.choice_problems(record)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contract) and (self.name, self.schema_str) == (
            other.name,
            other.schema_str,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.schema_str))


def record_problems(schema: Any, datum: Any) -> list[str]:
    """Checks a value against a fastavro-parsed schema and reports every problem.

    fastavro's own ``validate`` stops at the first invalid field; a caller fixing a
    payload wants all of them at once. Semantics follow fastavro's writer: a missing field
    takes its default, or null when it has none. Unlike the writer, keys that are not
    fields of the record are reported, since they are usually misspelled field names.

    Args:
        schema: A schema as returned by ``fastavro.parse_schema``.
        datum: The value to check (a mapping for a record schema).

    Returns:
        One message per problem, prefixed with the field path (``address.city``,
        ``tags[2]``); empty when the value is valid.
    """
    named: dict[str, Any] = {}
    if isinstance(schema, dict):
        named.update(schema.get("__named_schemas", {}))
    out: list[str] = []
    _check(datum, schema, named, "", out)
    return out


_INT_RANGES = {"int": 2**31, "long": 2**63}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "string": (str,),
    "bytes": (bytes, bytearray),
}


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _at(path: str) -> str:
    return path or "(value)"


def _check(datum: Any, schema: Any, named: dict[str, Any], path: str, out: list[str]) -> None:
    if isinstance(schema, list):
        _check_union(datum, schema, named, path, out)
    elif isinstance(schema, str):
        if schema in named:
            _check(datum, named[schema], named, path, out)
        else:
            _check_primitive(datum, schema, path, out)
    elif schema.get("logicalType") is not None and _logical_ok(datum, schema) is not None:
        if not _logical_ok(datum, schema):
            out.append(f"{_at(path)}: expected {schema['logicalType']}, got {_describe(datum)}")
    else:
        checker = _COMPLEX.get(schema["type"])
        if checker is None:
            _check(datum, schema["type"], named, path, out)
        else:
            checker(datum, schema, named, path, out)


def _check_array(
    datum: Any, schema: dict[str, Any], named: dict[str, Any], path: str, out: list[str]
) -> None:
    if not isinstance(datum, list | tuple):
        out.append(f"{_at(path)}: expected an array, got {_describe(datum)}")
        return
    for i, item in enumerate(datum):
        _check(item, schema["items"], named, f"{path}[{i}]", out)


def _check_map(
    datum: Any, schema: dict[str, Any], named: dict[str, Any], path: str, out: list[str]
) -> None:
    if not isinstance(datum, Mapping):
        out.append(f"{_at(path)}: expected a map, got {_describe(datum)}")
        return
    for key, value in datum.items():
        if not isinstance(key, str):
            out.append(f"{_at(path)}: map key {key!r} is not a string")
        _check(value, schema["values"], named, f"{path}[{key!r}]", out)


def _check_enum(
    datum: Any, schema: dict[str, Any], _named: dict[str, Any], path: str, out: list[str]
) -> None:
    if datum not in schema["symbols"]:
        out.append(f"{_at(path)}: {datum!r} is not one of {', '.join(schema['symbols'])}")


def _check_fixed(
    datum: Any, schema: dict[str, Any], _named: dict[str, Any], path: str, out: list[str]
) -> None:
    if not isinstance(datum, bytes | bytearray) or len(datum) != schema["size"]:
        out.append(f"{_at(path)}: expected {schema['size']} bytes, got {_describe(datum)}")


def _check_record(
    datum: Any, schema: dict[str, Any], named: dict[str, Any], path: str, out: list[str]
) -> None:
    if not isinstance(datum, Mapping):
        out.append(f"{_at(path)}: expected a record {schema['name']}, got {_describe(datum)}")
        return
    prefix = f"{path}." if path else ""
    names = set()
    for field in schema["fields"]:
        name = field["name"]
        names.add(name)
        if name not in datum and "default" in field:
            continue
        value = datum.get(name)
        before = len(out)
        _check(value, field["type"], named, prefix + name, out)
        if name not in datum and len(out) > before:
            del out[before:]
            out.append(f"{prefix}{name}: missing (the field is required)")
    out.extend(
        f"{prefix}{key}: not a field of {schema['name']}" for key in datum if key not in names
    )


def _check_union(
    datum: Any, branches: list[Any], named: dict[str, Any], path: str, out: list[str]
) -> None:
    attempts = []
    for branch in branches:
        branch_out: list[str] = []
        _check(datum, branch, named, path, branch_out)
        if not branch_out:
            return
        attempts.append((branch, branch_out))
    non_null = [(b, o) for b, o in attempts if b != "null"]
    if datum is not None and len(non_null) == 1:
        out.extend(non_null[0][1])
        return
    names = [b if isinstance(b, str) else b.get("name", b.get("type")) for b in branches]
    out.append(f"{_at(path)}: {_describe(datum)} matches none of {', '.join(map(str, names))}")


def _check_primitive(datum: Any, kind: str, path: str, out: list[str]) -> None:
    types = _PRIMITIVES.get(kind)
    if types is None:
        out.append(f"{_at(path)}: unknown Avro type {kind!r}")
        return
    ok = isinstance(datum, types) and (kind == "boolean" or not isinstance(datum, bool))
    if ok and kind in _INT_RANGES:
        limit = _INT_RANGES[kind]
        ok = -limit <= datum < limit
    if not ok:
        wanted = "null" if kind == "null" else kind
        out.append(f"{_at(path)}: expected {wanted}, got {_describe(datum)}")


_Checker = Callable[[Any, dict[str, Any], dict[str, Any], str, list[str]], None]
_COMPLEX: dict[str, _Checker] = {
    "record": _check_record,
    "array": _check_array,
    "map": _check_map,
    "enum": _check_enum,
    "fixed": _check_fixed,
}


def _logical_ok(datum: Any, schema: Mapping[str, Any]) -> bool | None:
    """Whether ``datum`` fits a logical type; None for logical types checked as their base."""
    logical = schema["logicalType"]
    if logical in ("timestamp-millis", "timestamp-micros"):
        return isinstance(datum, datetime.datetime) or (
            isinstance(datum, int) and not isinstance(datum, bool)
        )
    if logical == "uuid":
        if isinstance(datum, uuid.UUID):
            return True
        try:
            uuid.UUID(datum)
        except (TypeError, ValueError, AttributeError):
            return False
        return True
    return None


def _read(stem: str) -> dict[str, Any]:
    text = resources.files("conveyor.schemas").joinpath(f"{stem}.avsc").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _inline(node: Any, shared: Mapping[str, Any], defined: set[str], namespace: str) -> Any:
    """Replaces the first reference to each shared named type with its definition."""
    if isinstance(node, str):
        full = node if "." in node else f"{namespace}.{node}"
        if full in shared and full not in defined:
            defined.add(full)
            return _inline(shared[full], shared, defined, namespace)
        return node
    if isinstance(node, list):
        return [_inline(branch, shared, defined, namespace) for branch in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if "name" in node and node.get("type") in ("record", "enum", "fixed"):
        defined.add(_full_name(node))
        namespace = node.get("namespace", namespace)
    kind = node.get("type")
    if kind == "record":
        out["fields"] = [
            {**f, "type": _inline(f["type"], shared, defined, namespace)} for f in node["fields"]
        ]
    elif kind == "array":
        out["items"] = _inline(node["items"], shared, defined, namespace)
    elif kind == "map":
        out["values"] = _inline(node["values"], shared, defined, namespace)
    elif isinstance(kind, dict | list):
        out["type"] = _inline(kind, shared, defined, namespace)
    return out


def load_contract(stem: str, *, choices: Mapping[str, tuple[str, ...]] | None = None) -> Contract:
    """Loads ``<stem>.avsc`` from the package, inlining the shared named types it uses.

    Args:
        stem: The file name without ``.avsc`` (``job_envelope``).
        choices: Closed value sets of string fields, checked when encoding.
    """
    shared = {_full_name(s): s for s in (_read(f) for f in _SHARED_FILES)}
    schema = _read(stem)
    expanded = _inline(schema, shared, set(), schema.get("namespace", NAMESPACE))
    return Contract.from_schema(expanded, choices=choices)


ATTEMPT_ERROR = load_contract("attempt_error")
JOB_ENVELOPE = load_contract(
    "job_envelope", choices={"priority": PRIORITIES, "duration": DURATIONS}
)
JOB_EVENT = load_contract("job_event", choices={"kind": EVENT_KINDS, "priority": PRIORITIES})
DLQ_RECORD = load_contract(
    "dlq_record",
    choices={"error_reason": ERROR_REASONS, "priority": PRIORITIES, "duration": DURATIONS},
)
CONTROL_COMMAND = load_contract("control_command", choices={"command": CONTROL_COMMANDS})

ALL_CONTRACTS: tuple[Contract, ...] = (JOB_ENVELOPE, JOB_EVENT, DLQ_RECORD, CONTROL_COMMAND)
"""The contracts conveyor puts on its topics (AttemptError is only ever nested)."""
