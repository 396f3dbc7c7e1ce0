"""Confluent wire format for conveyor's contracts, through a schema registry.

Every value conveyor writes is framed as every Confluent-compatible client reads it
(:mod:`conveyor.schemas.wire`): a magic byte, the writer schema's registry id, the Avro
body. Encoding goes through confluent-kafka's ``AvroSerializer`` (fastavro underneath)
and decoding through its ``AvroDeserializer`` with the contract as reader schema, so a
newer reader reads what an older writer wrote.

Subjects follow the TopicNameStrategy (``<topic>-value``). A serializer is built once per
(schema, subject) and reused: it registers its schema on first use and caches the id, so
later encodes make no registry call. Call :meth:`Serde.register_all` at start-up to pay
that round trip before the first message instead of on it.

Errors are translated at this boundary: a record that does not fit its contract raises
:class:`~conveyor.errors.SerializationError`; bytes that cannot be decoded raise
:class:`~conveyor.errors.DeserializationError` (the worker dead-letters those); a registry
that does not answer raises :class:`~conveyor.errors.RegistryUnavailableError`, which is
not the message's fault and must not dead-letter it, and a schema id the registry says it
does not know raises :class:`~conveyor.errors.UnknownSchemaError` (a lagging follower
says that too, so the worker waits a while before it dead-letters).

:meth:`Serde.needs_registry` tells, without a network call, whether decoding some bytes
would ask the registry (their writer id has not been read here yet), so an event loop can
send only those to a thread.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

from conveyor.errors import (
    DeserializationError,
    RegistryUnavailableError,
    SerializationError,
    UnknownSchemaError,
)
from conveyor.schemas.contracts import Contract
from conveyor.schemas.uuidtext import parsed_pair, uuids_as_text
from conveyor.schemas.wire import (
    HEADER_SIZE,
    SCHEMA_NOT_FOUND,
    TRANSPORT_ERRORS,
    brief,
    registry_refusal,
    schema_id,
    unavailable,
    value_subject,
)
from conveyor.settings import Settings

DEFAULT_REGISTRY_TIMEOUT = 10.0
"""Seconds one registry request may take; confluent-kafka's default is no timeout."""


class Serde:
    """Encodes and decodes conveyor's contracts in Confluent wire format.

    Thread-safe: serializers are built under a lock, then used without one.

    Args:
        settings: Supplies the registry URL and credentials.
        client: A registry client to use instead of building one from ``settings``
            (tests pass ``SchemaRegistryClient.new_client({"url": "mock://..."})``).
            A client passed in is not closed by :meth:`close`.
    """

    def __init__(self, settings: Settings, *, client: SchemaRegistryClient | None = None) -> None:
        self._owns_client = client is None
        if client is None:
            config: dict[str, Any] = {
                **settings.registry_config(),
                "timeout": DEFAULT_REGISTRY_TIMEOUT,
            }
            client = SchemaRegistryClient(config)
        self._client = client
        self._url = settings.schema_registry_url
        self._lock = threading.Lock()
        self._serializers: dict[tuple[str, str], AvroSerializer] = {}
        self._deserializers: dict[str, AvroDeserializer] = {}
        self._known_ids: set[int] = set()  # writer ids fetched already: decoding is local
        # (writer schema id, reader schema, uuids as text) -> parsed (writer, reader), for
        # _fast_decode.
        self._parsed: dict[tuple[int, str, bool], tuple[Any, Any]] = {}

    @property
    def client(self) -> SchemaRegistryClient:
        """The registry client this serde talks through."""
        return self._client

    def close(self) -> None:
        """Closes the registry client's HTTP session if this serde built it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Serde:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_reachable(self) -> None:
        """Asks the registry for its subjects, so a worker learns at start that it answers.

        Raises:
            RegistryUnavailableError: The registry did not answer, or refused the request.
        """
        try:
            self._client.get_subjects()
        except SchemaRegistryError as exc:
            raise RegistryUnavailableError(
                f"schema registry at {self._url} refused to list subjects: {exc}; "
                "check CONVEYOR_SCHEMA_REGISTRY_URL"
            ) from exc
        except TRANSPORT_ERRORS as exc:
            raise unavailable(exc, self._url) from exc

    def encode(self, contract: Contract, topic: str, record: Mapping[str, Any]) -> bytes:
        """Encodes a record for ``topic``, registering the contract under ``<topic>-value``.

        Raises:
            SerializationError: The record does not fit the contract (the message names
                every field at fault), or the registry refused the schema.
            RegistryUnavailableError: The registry did not answer.
        """
        return self.encode_subject(contract, value_subject(topic), record)

    def encode_subject(self, contract: Contract, subject: str, record: Mapping[str, Any]) -> bytes:
        """Encodes a record under an explicit subject (payload schemas use their own).

        Raises:
            SerializationError: The record does not fit the contract, or the registry
                refused the schema.
            RegistryUnavailableError: The registry did not answer.
        """
        problems = contract.choice_problems(record)
        if problems:
            raise SerializationError(_invalid(contract, problems))
        serializer = self._serializer(contract, subject)
        try:
            data = serializer(record, None)
        except SchemaRegistryError as exc:
            raise registry_refusal(exc, self._url, f"{contract.name} for {subject}") from exc
        except TRANSPORT_ERRORS as exc:
            raise unavailable(exc, self._url) from exc
        except Exception as exc:
            # fastavro's writer raises TypeError, ValueError, KeyError, AttributeError or
            # OverflowError without naming the field; the full check runs only on this
            # failure path to keep the happy path at the writer's speed.
            found = contract.problems(record) or [brief(exc)]
            raise SerializationError(_invalid(contract, found)) from exc
        if data is None:  # the serializer returns None only for a None record
            raise SerializationError(f"{contract.short_name}: there is no record to encode")
        return data

    def needs_registry(self, data: bytes | None) -> bool:
        """Whether decoding ``data`` may call the registry: its writer schema id is well
        formed and has not been fetched by this serde yet. False for bytes that fail
        before any lookup (no header, wrong magic byte), which decode locally."""
        try:
            return schema_id(data) not in self._known_ids  # type: ignore[arg-type]
        except DeserializationError:
            return False

    def decode(
        self, contract: Contract, topic: str, data: bytes, *, text_uuids: bool = False
    ) -> dict[str, Any]:
        """Decodes a value read from ``topic`` with ``contract`` as the reader schema.

        Args:
            text_uuids: Return uuid fields as their text on the wire, not as
                ``uuid.UUID`` (see :meth:`decode_any`).

        Raises:
            DeserializationError: The bytes are too short, carry a wrong magic byte, name a
                schema id the registry does not know, or hold an Avro body that does not
                decode into the contract. The message says which.
            RegistryUnavailableError: The registry did not answer.
        """
        decoded = self.decode_any(data, contract, source=(contract, topic), text_uuids=text_uuids)
        if not isinstance(decoded, dict):
            raise DeserializationError(f"{contract.name} on {topic}: decoded a non-record value")
        return decoded

    def decode_any(
        self,
        data: bytes,
        reader: Contract | None = None,
        *,
        source: str | tuple[Contract, str] = "",
        text_uuids: bool = False,
    ) -> Any:
        """Decodes wire-format bytes with ``reader`` as reader schema, or the writer's own.

        Args:
            data: Confluent wire-format bytes.
            reader: The schema to resolve into; None reads with the writer schema.
            source: What is being decoded, for error messages: text, or a contract and
                the topic it was read from (named only if there is an error).
            text_uuids: Return uuid fields as the text the writer wrote, not as
                ``uuid.UUID``. Reading them as text costs a fifth less per job envelope
                (fastavro makes each ``uuid.UUID`` in Python); a caller that wants one
                form checks or converts the text itself.

        Raises:
            DeserializationError: The bytes cannot be decoded (see :meth:`decode`).
            RegistryUnavailableError: The registry did not answer.
        """
        try:
            writer_id = schema_id(data)
        except DeserializationError as exc:
            raise DeserializationError(f"{_label(source)}{exc}") from None
        if len(data) == HEADER_SIZE:
            raise DeserializationError(f"{_label(source)}message has a header but no Avro body")
        fast = self._fast_decode(writer_id, data, reader, text_uuids)
        if fast is not _MISS:
            return fast
        label = _label(source)
        deserializer = self._deserializer(reader)
        try:
            decoded = deserializer(data, None)
        except SchemaRegistryError as exc:
            if exc.error_code in SCHEMA_NOT_FOUND or exc.http_status_code == 404:
                raise UnknownSchemaError(
                    f"{label}schema id {writer_id} is unknown to the registry at {self._url}",
                    writer_id,
                ) from exc
            raise registry_refusal(exc, self._url, f"schema id {writer_id}") from exc
        except TRANSPORT_ERRORS as exc:
            raise unavailable(exc, self._url) from exc
        except Exception as exc:
            # Any failure past the registry lookup means the body is not what the writer
            # schema says (truncated, corrupt) or cannot resolve into the reader schema.
            self._known_ids.add(writer_id)
            raise DeserializationError(
                f"{label}Avro body does not decode with writer schema id {writer_id}: {brief(exc)}"
            ) from exc
        self._known_ids.add(writer_id)
        self._learn(writer_id, reader)
        return uuids_as_text(decoded) if text_uuids else decoded

    def register(self, contract: Contract, topic: str) -> int:
        """Registers ``contract`` under ``<topic>-value`` and returns its schema id.

        Raises:
            SerializationError: The registry refused it (for example, incompatible).
            RegistryUnavailableError: The registry did not answer.
        """
        return self.register_subject(contract, value_subject(topic))

    def register_subject(self, contract: Contract, subject: str) -> int:
        """Registers ``contract`` under an explicit subject and returns its schema id.

        Raises:
            SerializationError: The registry refused it (for example, incompatible).
            RegistryUnavailableError: The registry did not answer.
        """
        try:
            found: int = self._client.register_schema(
                subject, Schema(contract.schema_str, schema_type="AVRO")
            )
        except SchemaRegistryError as exc:
            raise registry_refusal(exc, self._url, f"{contract.name} for {subject}") from exc
        except TRANSPORT_ERRORS as exc:
            raise unavailable(exc, self._url) from exc
        return found

    def register_all(self, pairs: Iterable[tuple[Contract, str]]) -> dict[str, int]:
        """Registers each (contract, topic) pair under ``<topic>-value``.

        Returns:
            Schema id by subject.

        Raises:
            SerializationError: The registry refused one of them.
            RegistryUnavailableError: The registry did not answer.
        """
        return {value_subject(topic): self.register(contract, topic) for contract, topic in pairs}

    def _serializer(self, contract: Contract, subject: str) -> AvroSerializer:
        key = (subject, contract.schema_str)
        serializer = self._serializers.get(key)
        if serializer is None:
            with self._lock:
                serializer = self._serializers.get(key)
                if serializer is None:
                    serializer = AvroSerializer(
                        self._client,
                        contract.schema_str,
                        conf={"subject.name.strategy": _fixed_subject(subject)},
                    )
                    self._serializers[key] = serializer
        return serializer

    def _fast_decode(
        self, writer_id: int, data: bytes, reader: Contract | None, text_uuids: bool
    ) -> Any:
        """Decodes with fastavro straight after the header, once the pair is known.

        A pair (writer schema id, reader schema) is known after the deserializer decoded
        it once (``_learn``), so its registry lookups and errors stay the deserializer's.
        Returns ``_MISS`` when the pair is not known yet, or the body does not decode
        here (the deserializer then decodes it, or says why it cannot).
        """
        schemas = self._parsed.get(
            (writer_id, "" if reader is None else reader.schema_str, text_uuids)
        )
        if schemas is None:
            return _MISS
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), *schemas)
        except Exception:
            return _MISS

    def _learn(self, writer_id: int, reader: Contract | None) -> None:
        """Caches the parsed writer and reader schemas of a pair that decoded, as they
        are and with their uuid fields read as text."""
        key = (writer_id, "" if reader is None else reader.schema_str)
        if (*key, False) in self._parsed:
            return
        try:
            writer = self._client.get_schema(writer_id)  # the client caches it
            if writer.references or writer.schema_str is None:
                return  # named references: the deserializer resolves them
            writer_json = json.loads(writer.schema_str)
            reader_json = None if reader is None else json.loads(reader.schema_str)
            pairs = {
                text: parsed_pair(writer_json, reader_json, text_uuids=text)
                for text in (False, True)
            }
        except Exception:  # a lookup or parse that fails here only leaves the slow path
            return
        for text, pair in pairs.items():
            self._parsed[(*key, text)] = pair

    def _deserializer(self, reader: Contract | None) -> AvroDeserializer:
        key = "" if reader is None else reader.schema_str
        deserializer = self._deserializers.get(key)
        if deserializer is None:
            with self._lock:
                deserializer = self._deserializers.get(key)
                if deserializer is None:
                    # An explicit strategy keeps confluent-kafka off its ASSOCIATED default,
                    # which needs an association API that not every registry has.
                    deserializer = AvroDeserializer(
                        self._client,
                        None if reader is None else reader.schema_str,
                        conf={"subject.name.strategy": _fixed_subject("")},
                    )
                    self._deserializers[key] = deserializer
        return deserializer


def _label(source: str | tuple[Contract, str]) -> str:
    """The prefix of an error message about ``source``."""
    if isinstance(source, tuple):
        contract, topic = source
        return f"{contract.short_name} on {topic}: "
    return f"{source}: " if source else ""


_MISS = object()
"""``_fast_decode``'s answer when the slow path must decode."""


def _fixed_subject(subject: str) -> Callable[[Any, Any], str]:
    def strategy(_ctx: Any, _record_name: Any) -> str:
        return subject

    return strategy


def _invalid(contract: Contract, problems: list[str]) -> str:
    return f"{contract.short_name} record does not fit its contract: " + "; ".join(problems)


__all__ = ["DEFAULT_REGISTRY_TIMEOUT", "Serde"]
