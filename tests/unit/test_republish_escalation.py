"""The relay's producer escalates a fatal error like the job producer does, without a broker.

confluent-kafka's own error objects drive ``Republisher``: a fatal error, through its
``error_cb`` or in a delivery report, makes it unusable with one clear error for every
pending and later republish, and any other failure stays a plain ``DeliveryError`` (the
relay retries those, and ends its run on the fatal one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from conveyor.consumer.republish import Republisher
from conveyor.errors import DeliveryError, ProducerFatalError
from conveyor.observability import librdkafka
from conveyor.producer.fatal import FatalWatch
from conveyor.settings import Settings

#: Long enough that a record failing within a test failed for another reason.
DELIVERY_TIMEOUT = 10.0
TOPIC = "acme.jobs.normal"


@pytest.fixture
async def republisher() -> AsyncIterator[Republisher]:
    made = Republisher(
        Settings(kafka_bootstrap="127.0.0.1:9"),
        delivery_timeout=DELIVERY_TIMEOUT,
        linger_ms=1,
        name="the retry relay's producer",
    )
    yield made
    made._watch(KafkaError(KafkaError._FATAL, "test over", fatal=True))  # close at once
    await asyncio.to_thread(made.close)


def _send(republisher: Republisher) -> asyncio.Future[None]:
    return republisher.send(TOPIC, value=b"v", key=b"k", headers=[])


def _fatal(reason: str) -> KafkaError:
    return KafkaError(KafkaError._FATAL, reason, fatal=True)


async def _failure(future: asyncio.Future[None]) -> BaseException | None:
    await asyncio.wait_for(asyncio.wait([future]), timeout=5.0)
    return future.exception()


async def test_a_fatal_client_error_fails_pending_and_later_republishes(
    republisher: Republisher,
) -> None:
    """The broker is unreachable, so a record waits; a fatal ``error_cb`` report purges
    it, and it fails with the fatal error long before its delivery timeout, as does
    every later republish."""
    pending = _send(republisher)
    await asyncio.sleep(0.2)
    assert not pending.done()
    assert republisher.fatal_error is None
    republisher._watch(_fatal("Idempotent producer: gap in sequence"))
    error = republisher.fatal_error
    assert isinstance(error, ProducerFatalError)
    assert str(error).startswith("the retry relay's producer for 127.0.0.1:9 hit a fatal error")
    assert "gap in sequence" in str(error)
    assert await _failure(pending) is error
    later = _send(republisher)
    assert later.done()
    assert later.exception() is error


async def test_a_fatal_delivery_report_fails_its_record_and_breaks_the_producer(
    republisher: Republisher,
) -> None:
    future = asyncio.get_running_loop().create_future()
    republisher._report(asyncio.get_running_loop(), future, TOPIC)(_fatal("fenced"), None)  # type: ignore[arg-type]
    error = await _failure(future)
    assert isinstance(error, ProducerFatalError)
    assert "fenced" in str(error)
    assert republisher.fatal_error is error
    assert _send(republisher).exception() is error


async def test_a_non_fatal_error_is_a_plain_delivery_error_and_the_producer_keeps_working(
    republisher: Republisher,
) -> None:
    loop = asyncio.get_running_loop()
    republisher._watch(KafkaError(KafkaError._TRANSPORT, "broker went away"))
    future = loop.create_future()
    republisher._report(loop, future, TOPIC)(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)  # type: ignore[arg-type]
    error = await _failure(future)
    assert type(error) is DeliveryError
    assert str(error).startswith(f"record not delivered to {TOPIC}: ")
    assert republisher.fatal_error is None
    later = _send(republisher)
    await asyncio.sleep(0.2)
    assert not later.done()  # queued, waiting for a broker


def test_the_shared_watch_keeps_the_first_fatal_error_and_reads_produce_refusals() -> None:
    """``FatalWatch`` (shared with the job producer) turns a fatal ``produce`` refusal
    into the fatal error, leaves any other refusal to its caller, and keeps the first."""
    watch = FatalWatch(librdkafka.ClientErrors(), client="the test producer", remedy="restart")
    assert watch.refused(KafkaException(KafkaError(KafkaError._TRANSPORT))) is None
    assert watch.fatal is None
    error = watch.refused(KafkaException(_fatal("fenced")))
    assert isinstance(error, ProducerFatalError)
    assert str(error) == (
        "the test producer hit a fatal error and sends no more: fenced (_FATAL); restart"
    )
    assert watch.refused(KafkaException(_fatal("later"))) is error
    assert watch.escalate(KafkaError(KafkaError._PURGE_QUEUE)) is error
