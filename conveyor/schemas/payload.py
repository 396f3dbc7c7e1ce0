"""Job payload contracts: a job type may declare an Avro schema for its payload.

A type without a schema carries JSON (``application/json``: compact, UTF-8). A type with
one carries Confluent wire format (``application/vnd.conveyor.avro``) registered under the
subject ``<topic_prefix>.payload.<job_type>``: one subject per job type, whatever topic
or priority the job travels on, so producers and workers agree on ids and the registry
checks each type's evolution on its own.

A worker decodes with the writer schema id carried in the bytes, resolved into the schema
its handler declared (when it declared one), so workers and producers can be upgraded in
either order within the rules below.

Evolution rules (the registry enforces BACKWARD compatibility by default: a new reader
must read every older writer's data):

- Add a field only with a default; the reader fills it in for older data.
- Remove a field only if it had a default.
- Never rename a field; add the old name to the new field's ``aliases`` instead.
- Never change a field's type, except by Avro's promotions (int to long, float or
  double; long to float or double; float to double; string and bytes either way).
- Enums only grow, and only when the enum declares a ``default`` symbol that old readers
  fall back to.
- Deploy readers (workers) before writers (producers) when a change adds a field.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import types
import typing
import uuid
from collections.abc import Mapping
from typing import Any

from conveyor.errors import DeserializationError, SerializationError
from conveyor.schemas.contracts import CONTENT_TYPE_AVRO, CONTENT_TYPE_JSON, Contract
from conveyor.schemas.serde import Serde

PAYLOAD_NAMESPACE = "io.conveyor.payload"

_PRIMITIVE_TYPES: dict[Any, Any] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
    datetime.datetime: {"type": "long", "logicalType": "timestamp-millis"},
    uuid.UUID: {"type": "string", "logicalType": "uuid"},
}
_SUPPORTED = (
    "str, int, float, bool, bytes, datetime, UUID, X | None, list[X], dict[str, X] "
    "and nested dataclasses"
)


@dataclasses.dataclass(frozen=True)
class PayloadSchema:
    """The Avro record schema a job type's payloads must fit.

    Args:
        contract: The schema as a contract (name, self-contained JSON, parsed form).
    """

    contract: Contract

    @classmethod
    def from_avsc(cls, schema: Mapping[str, Any]) -> PayloadSchema:
        """Wraps an Avro record schema given as a mapping (a parsed ``.avsc`` file).

        Raises:
            ValueError: The mapping is not a valid, self-contained Avro record schema.
        """
        return cls(Contract.from_schema(schema))

    @classmethod
    def from_dataclass(cls, klass: type) -> PayloadSchema:
        """Derives an Avro record schema from a dataclass's type hints.

        ``str``, ``int`` (long), ``float`` (double), ``bool``, ``bytes``, ``datetime``
        (timestamp-millis), ``UUID``, ``X | None`` (a union with null, default null),
        ``list[X]``, ``dict[str, X]`` and nested dataclasses are supported. Records are
        named after the classes, in namespace ``io.conveyor.payload``. A field's literal
        default (or a ``list``/``dict`` default factory) becomes its Avro default, so
        adding such a field later is a compatible change.

        Raises:
            TypeError: ``klass`` is not a dataclass, or a field's type is unsupported
                (the message names the field).
        """
        return cls(Contract.from_schema(_record_schema(klass, {})))

    @property
    def name(self) -> str:
        """The record's full name."""
        return self.contract.name

    def to_avsc(self) -> dict[str, Any]:
        """The schema as a JSON-like mapping, as it would be written in a ``.avsc`` file."""
        schema: dict[str, Any] = json.loads(self.contract.schema_str)
        return schema


def _dataclass_type(klass: type, defined: dict[str, type]) -> dict[str, Any] | str:
    """A nested dataclass: its record schema the first time, a name reference after."""
    full_name = f"{PAYLOAD_NAMESPACE}.{klass.__name__}"
    if full_name not in defined:
        return _record_schema(klass, defined)
    if defined[full_name] is not klass:
        raise TypeError(
            f"two dataclasses are named {klass.__name__} ({defined[full_name]!r} and "
            f"{klass!r}); Avro record names must be unique within a payload schema"
        )
    return full_name


def _record_schema(klass: Any, defined: dict[str, type]) -> dict[str, Any]:
    if not (isinstance(klass, type) and dataclasses.is_dataclass(klass)):
        raise TypeError(f"{klass!r} is not a dataclass")
    defined[f"{PAYLOAD_NAMESPACE}.{klass.__name__}"] = klass
    try:
        hints = typing.get_type_hints(klass)
    except NameError as exc:
        raise TypeError(f"cannot resolve the type hints of {klass.__qualname__}: {exc}") from exc
    fields = []
    for field in dataclasses.fields(klass):
        where = f"{klass.__qualname__}.{field.name}"
        avro_type = _avro_type(hints[field.name], defined, where)
        entry: dict[str, Any] = {"name": field.name, "type": avro_type}
        has_default, default = _field_default(field)
        if isinstance(avro_type, list):
            # Avro requires a union's default to match its first branch.
            if has_default and default is not None:
                entry["type"] = [avro_type[1], "null"]
            entry["default"] = default if has_default else None
        elif has_default:
            entry["default"] = default
        fields.append(entry)
    return {
        "type": "record",
        "name": klass.__name__,
        "namespace": PAYLOAD_NAMESPACE,
        "fields": fields,
    }


def _avro_type(hint: Any, defined: dict[str, type], where: str) -> Any:
    if hint in _PRIMITIVE_TYPES:
        return _PRIMITIVE_TYPES[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return ["null", _avro_type(others[0], defined, where)]
        raise TypeError(f"field {where}: unsupported union {hint!r}; only X | None is supported")
    if origin is list and len(args) == 1:
        return {"type": "array", "items": _avro_type(args[0], defined, f"{where}[]")}
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise TypeError(f"field {where}: map keys must be str, got {args[0]!r}")
        return {"type": "map", "values": _avro_type(args[1], defined, f"{where}[]")}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_type(hint, defined)
    raise TypeError(f"field {where}: unsupported type {hint!r}; supported are {_SUPPORTED}")


def _field_default(field: dataclasses.Field[Any]) -> tuple[bool, Any]:
    """The field's default as an Avro JSON default, if it has one Avro can express."""
    if field.default is not dataclasses.MISSING:
        value = field.default
        if value is None or isinstance(value, str | int | float | bool):
            return True, value
        if isinstance(value, bytes):
            # Avro writes bytes defaults as strings of code points 0-255.
            return True, value.decode("latin-1")
        return False, None
    if field.default_factory is list:
        return True, []
    if field.default_factory is dict:
        return True, {}
    return False, None


def _as_record(payload: Any) -> Any:
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return dataclasses.asdict(payload)
    return payload


def _json_bytes(payload: Any) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


class PayloadCodec:
    """Validates, encodes and decodes job payloads, per job type.

    Args:
        serde: The serde whose registry holds the payload schemas.
        topic_prefix: The deployment's topic prefix; payload subjects are
            ``<topic_prefix>.payload.<job_type>``.
    """

    def __init__(self, serde: Serde, topic_prefix: str) -> None:
        self._serde = serde
        self._topic_prefix = topic_prefix
        self._schemas: dict[str, PayloadSchema] = {}
        self._lock = threading.Lock()

    def register_type(
        self, job_type: str, schema: PayloadSchema | Mapping[str, Any] | type
    ) -> PayloadSchema:
        """Declares the payload schema of a job type. Makes no registry call.

        Args:
            job_type: The job type (``email.send``).
            schema: A :class:`PayloadSchema`, an Avro record schema mapping, or a dataclass.

        Returns:
            The schema now in force for the type.

        Raises:
            TypeError: A dataclass with unsupported field types.
            ValueError: An invalid schema, or the type already has a different schema.
        """
        if isinstance(schema, PayloadSchema):
            found = schema
        elif isinstance(schema, type):
            found = PayloadSchema.from_dataclass(schema)
        else:
            found = PayloadSchema.from_avsc(schema)
        with self._lock:
            current = self._schemas.get(job_type)
            if current is not None and current != found:
                raise ValueError(f"job type {job_type!r} already has a different payload schema")
            self._schemas[job_type] = found
        return found

    def schema_for(self, job_type: str) -> PayloadSchema | None:
        """The schema declared for ``job_type``, or None when its payloads are JSON."""
        return self._schemas.get(job_type)

    def subject(self, job_type: str) -> str:
        """The registry subject of a job type's payload schema."""
        return f"{self._topic_prefix}.payload.{job_type}"

    def register(self, job_type: str) -> int:
        """Registers the type's payload schema now and returns its id (instead of lazily).

        Raises:
            KeyError: The type has no payload schema.
            SerializationError: The registry refused the schema (for example, incompatible).
            RegistryUnavailableError: The registry did not answer.
        """
        return self._serde.register_subject(
            self._schemas[job_type].contract, self.subject(job_type)
        )

    def problems(self, job_type: str, payload: Any) -> list[str]:
        """Checks a payload without encoding it.

        Returns:
            Every problem found, one per invalid field for a typed job; empty when the
            payload is valid.
        """
        schema = self._schemas.get(job_type)
        record = _as_record(payload)
        if schema is None:
            try:
                _json_bytes(record)
            except (TypeError, ValueError) as exc:
                return [f"not JSON-serialisable: {exc}"]
            return []
        return (
            schema.contract.problems(record)
            if isinstance(record, Mapping)
            else [
                f"expected a mapping or a dataclass for {schema.name}, got {type(record).__name__}"
            ]
        )

    def encode(self, job_type: str, payload: Any) -> tuple[bytes, str]:
        """Encodes a payload as its type requires.

        Returns:
            ``(bytes, content_type)``: compact UTF-8 JSON and ``application/json`` for a
            type without a schema; Confluent wire format and
            ``application/vnd.conveyor.avro`` for a type with one.

        Raises:
            SerializationError: The payload is invalid (every problem is listed), or the
                registry refused the schema.
            RegistryUnavailableError: The registry did not answer.
        """
        schema = self._schemas.get(job_type)
        record = _as_record(payload)
        if schema is None:
            try:
                return _json_bytes(record), CONTENT_TYPE_JSON
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"payload of {job_type} is not JSON-serialisable: {exc}"
                ) from exc
        problems = self.problems(job_type, record)
        if problems:
            raise SerializationError(f"payload of {job_type} is invalid: " + "; ".join(problems))
        data = self._serde.encode_subject(schema.contract, self.subject(job_type), record)
        return data, CONTENT_TYPE_AVRO

    def needs_registry(self, data: bytes, content_type: str) -> bool:
        """Whether :meth:`decode` may call the registry: an Avro payload whose writer
        schema id this codec's serde has not read yet (run that decode in a thread)."""
        return content_type == CONTENT_TYPE_AVRO and self._serde.needs_registry(data)

    def decode(self, job_type: str, data: bytes, content_type: str) -> Any:
        """Decodes a payload read from a job envelope.

        Returns:
            The parsed JSON value, or a dict for an Avro payload (read with the writer's
            schema id and resolved into the type's declared schema, if any).

        Raises:
            DeserializationError: The bytes do not decode, or the content type is unknown.
            RegistryUnavailableError: The registry did not answer.
        """
        if content_type == CONTENT_TYPE_JSON:
            try:
                return json.loads(data)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise DeserializationError(f"payload of {job_type} is not JSON: {exc}") from exc
        if content_type == CONTENT_TYPE_AVRO:
            schema = self._schemas.get(job_type)
            reader = None if schema is None else schema.contract
            return self._serde.decode_any(data, reader, source=f"payload of {job_type}")
        raise DeserializationError(
            f"payload of {job_type} has unknown content type {content_type!r} "
            f"(expected {CONTENT_TYPE_JSON} or {CONTENT_TYPE_AVRO})"
        )
