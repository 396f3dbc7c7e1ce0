"""Reading back what landed on the real broker, for assertions; librdkafka errors to inject."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition


@dataclass(frozen=True)
class Record:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def read_topic(bootstrap: str, topic: str, count: int, *, timeout: float = 30.0) -> list[Record]:
    """Reads ``count`` messages from every partition of ``topic`` from the beginning.

    Returns as soon as ``count`` messages arrived, or what arrived by ``timeout``. It
    counts messages rather than trusting watermarks, which some brokers report per batch.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            records.append(_record(msg))
        return records
    finally:
        consumer.close()


def _record(msg: Message) -> Record:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=msg.key(),
        value=msg.value() or b"",
        headers={k: v for k, v in pairs if isinstance(v, bytes)},
    )


def wait_visible(bootstrap: str, topic: str, partitions: int, *, timeout: float = 15.0) -> None:
    """Waits until a fresh client sees ``topic`` with ``partitions`` partitions.

    Apache Kafka's CreateTopics returns once the controller has the topic; a metadata
    request may still miss it for a moment, so a test that created one waits here.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions:
            return
        time.sleep(0.05)
    raise AssertionError(f"{topic} with {partitions} partitions not visible after {timeout}s")


def fatal_error(reason: str) -> KafkaError:
    """What librdkafka hands a producer's ``error_cb`` when idempotence breaks."""
    return KafkaError(KafkaError._FATAL, reason, fatal=True)


def _broken_on_first_send(command: str) -> str:
    """A Python script running ``conveyor <command>`` whose ``Republisher`` reports a
    fatal error on its first send (for ``python -c``)."""
    return f"""
import sys
from confluent_kafka import KafkaError
from conveyor.cli import main
from conveyor.consumer.republish import Republisher

send = Republisher.send

def broken(self, *args, **kwargs):
    self._watch(KafkaError(KafkaError._FATAL, "sequence gap (injected)", fatal=True))
    return send(self, *args, **kwargs)

Republisher.send = broken
sys.exit(main([{command!r}]))
"""


@contextlib.asynccontextmanager
async def broken_on_first_send(
    command: str, env: Mapping[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Runs ``conveyor <command>`` (its ``Republisher`` fatally broken on the first send)
    with ``env`` on top of ``PATH`` and ``HOME``; kills it if still running at the end."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _broken_on_first_send(command),
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def one_error_line(returncode: int | None, out: bytes, err: bytes) -> str:
    """The single ``conveyor: error:`` line of a CLI that exited 1, printed nothing on
    stdout and no traceback."""
    stderr = err.decode()
    errors = [line for line in stderr.splitlines() if line.startswith("conveyor: error:")]
    assert (returncode, out.decode(), len(errors)) == (1, "", 1), stderr
    assert "Traceback" not in stderr
    return errors[0]
