"""Confluent wire format framing, and what the registry's failures mean to conveyor.

Every value conveyor writes is ``0x00`` (magic byte), the writer schema's registry id as
4 big-endian bytes, then the Avro body. :func:`schema_id` reads that header, refusing
bytes that are not framed so (a tombstone, another serializer's bytes) with one clear
:class:`~conveyor.errors.DeserializationError`.

The registry client raises network errors of whichever HTTP library it was built on, and
:class:`SchemaRegistryError` for an HTTP answer; :func:`unavailable` and
:func:`registry_refusal` turn those into conveyor's errors, so a registry that does not
answer (not the message's fault) is never mistaken for a record that does not fit.
"""

from __future__ import annotations

import importlib
import struct

from confluent_kafka.schema_registry import SchemaRegistryError

from conveyor.errors import DeserializationError, RegistryUnavailableError, SerializationError

MAGIC_BYTE = 0
HEADER_SIZE = 5
#: 40403 is "schema not found" on Confluent's registry; its mock client answers 40400.
SCHEMA_NOT_FOUND = (40400, 40403)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network error classes the registry client may raise.

    confluent-kafka uses httpx2 when it is installed and httpx otherwise; both are
    caught, so the translation survives either choice.
    """
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


def value_subject(topic: str) -> str:
    """The TopicNameStrategy subject of a topic's values (``<topic>-value``)."""
    return f"{topic}-value"


def schema_id(data: bytes) -> int:
    """Reads the writer schema id from Confluent wire-format bytes.

    Raises:
        DeserializationError: The bytes are too short or do not start with the magic byte.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        # Kafka hands None for a tombstone; a worker must dead-letter it, not crash.
        raise DeserializationError(f"message has no value bytes (got {type(data).__name__})")
    if len(data) < HEADER_SIZE:
        raise DeserializationError(
            f"message is {len(data)} byte(s), shorter than the 5-byte Confluent header "
            "(magic byte and schema id): not written by a schema-registry serializer"
        )
    if data[0] != MAGIC_BYTE:
        raise DeserializationError(
            f"wrong magic byte 0x{data[0]:02x} (expected 0x00): "
            "not Confluent wire format, or written by another serializer"
        )
    found: int = struct.unpack_from(">I", data, 1)[0]
    return found


def unavailable(exc: BaseException, url: str) -> RegistryUnavailableError:
    """A registry that did not answer: not the message's fault."""
    return RegistryUnavailableError(
        f"schema registry at {url} did not answer ({brief(exc)}); "
        "check CONVEYOR_SCHEMA_REGISTRY_URL and that the registry is running"
    )


def registry_refusal(exc: SchemaRegistryError, url: str, what: str) -> Exception:
    """Maps an HTTP answer from the registry to a conveyor error."""
    status = exc.http_status_code
    if status is not None and (status >= 500 or status in (401, 403, 408, 429)):
        return RegistryUnavailableError(f"schema registry at {url} refused {what}: {exc}")
    return SerializationError(f"schema registry at {url} refused {what}: {exc}")


def brief(exc: BaseException, limit: int = 300) -> str:
    """The exception's type and message, cut short: fastavro puts whole schemas in some."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "SCHEMA_NOT_FOUND",
    "TRANSPORT_ERRORS",
    "brief",
    "registry_refusal",
    "schema_id",
    "unavailable",
    "value_subject",
]
