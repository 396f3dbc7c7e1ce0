"""Producer failures escalate by kind (issue 14, defect 10), without a broker.

confluent-kafka's own error objects drive ``DeliveryCore``: a fatal error makes the core
unusable with one clear error, a timeout is an uncertain delivery, and a waiter its
caller cancelled does not break the delivery reports of the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError

from conveyor.errors import DeliveryError, ProducerFatalError, UncertainDeliveryError
from conveyor.producer.delivery import DeliveryCore
from conveyor.producer.jobs import Outgoing
from conveyor.settings import Settings


class _Message:
    """The part of a confluent-kafka ``Message`` a delivery report reads."""

    def topic(self) -> str:
        return "acme.jobs.normal"


@pytest.fixture
def core() -> Iterator[DeliveryCore]:
    made = DeliveryCore(Settings(kafka_bootstrap="127.0.0.1:9"), delivery_timeout=5.0)
    yield made
    with contextlib.suppress(DeliveryError):  # what a test queued was never delivered
        made.close(timeout=0)


def _outgoing() -> Outgoing:
    return Outgoing("job-1", "acme.jobs.normal", b"k", b"v", [])


def _error_cb(core: DeliveryCore) -> Callable[[KafkaError], None]:
    """The ``error_cb`` the core gave its librdkafka client."""
    watch = core._watch
    assert watch is not None
    return watch


def _running() -> concurrent.futures.Future[None]:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


def test_a_fatal_client_error_makes_the_producer_unusable_with_one_clear_error(
    core: DeliveryCore,
) -> None:
    assert core.fatal_error is None
    error_cb = _error_cb(core)
    error_cb(KafkaError(KafkaError._FATAL, "Idempotent producer: gap in sequence", fatal=True))
    assert isinstance(core.fatal_error, ProducerFatalError)
    assert "fatal error" in str(core.fatal_error)
    assert "gap in sequence" in str(core.fatal_error)
    with pytest.raises(ProducerFatalError, match="sends no more"):
        core.send([_outgoing()])


def test_a_non_fatal_client_error_leaves_the_producer_usable(core: DeliveryCore) -> None:
    _error_cb(core)(KafkaError(KafkaError._TRANSPORT, "broker went away"))
    assert core.fatal_error is None
    [future] = core.send([_outgoing()])
    assert not future.done()


def test_a_fatal_delivery_report_fails_its_job_with_the_fatal_error(core: DeliveryCore) -> None:
    future = _running()
    report = core._callback("job-1", future)
    report(KafkaError(KafkaError._FATAL, "fenced", fatal=True), _Message())  # type: ignore[arg-type]
    assert isinstance(future.exception(), ProducerFatalError)
    assert core.fatal_error is future.exception()


def test_a_timed_out_message_is_an_uncertain_delivery_not_a_failed_one(
    core: DeliveryCore,
) -> None:
    future = _running()
    core._callback("job-7", future)(KafkaError(KafkaError._MSG_TIMED_OUT), _Message())  # type: ignore[arg-type]
    error = future.exception()
    assert isinstance(error, UncertainDeliveryError)
    assert "may or may not have been delivered" in str(error)
    assert "dedupe_key" in str(error)
    future = _running()
    core._callback("job-8", future)(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _Message())  # type: ignore[arg-type]
    assert type(future.exception()) is DeliveryError


def test_a_report_for_a_waiter_its_caller_cancelled_is_dropped_quietly(
    core: DeliveryCore,
) -> None:
    cancelled: concurrent.futures.Future[None] = concurrent.futures.Future()
    assert cancelled.cancel()
    report = core._callback("job-1", cancelled)
    report(None, _Message())  # type: ignore[arg-type]
    report(KafkaError(KafkaError._MSG_TIMED_OUT), _Message())  # type: ignore[arg-type]
    assert cancelled.cancelled()


def test_futures_from_send_cannot_be_cancelled_under_the_poll_thread(core: DeliveryCore) -> None:
    [future] = core.send([_outgoing()])
    assert not future.cancel()
