"""The one delivery mechanism behind both producer faces.

A confluent-kafka ``Producer`` (idempotent, ``acks=all``) plus a thread that polls it,
so delivery reports arrive without the caller polling. Each message's outcome is a
``concurrent.futures.Future``: the sync producer waits on it, the async producer wraps
it with ``asyncio.wrap_future``. A failed delivery is never silent: it goes to the
``on_delivery_error`` callback if one is given, and is otherwise kept and raised by
the next ``flush()`` or ``close()``; either way it is counted.

A core made with ``fail_fast=True`` (the producers' default) that has never reached a
broker checks, once a delivery has waited ``PROBE_AFTER`` seconds, whether any broker
answers; if none does within ``librdkafka.CONNECT_TIMEOUT``, ``wait`` and ``flush``
drop what is queued and raise at once, naming the address and ``CONVEYOR_KAFKA_BOOTSTRAP``,
rather than after the whole delivery timeout. Once a broker has answered, an outage
waits as before, so a broker restart does not fail a producer that was working.

Failures escalate by kind:

- a *fatal* error (librdkafka's idempotence guarantees broken, reported through
  ``error_cb`` or a delivery report with ``err.fatal()``) makes the core unusable:
  every pending and later send fails with :class:`~conveyor.errors.ProducerFatalError`,
  and :attr:`DeliveryCore.fatal_error` says why (the worker fails ``/healthz`` on it).
  The detection is :mod:`conveyor.producer.fatal`'s, which the retry relay's producer
  shares;
- ``_MSG_TIMED_OUT`` on this idempotent producer means *maybe delivered*: the broker may
  have appended the message and its acknowledgement been lost. It raises
  :class:`~conveyor.errors.UncertainDeliveryError`, so a caller knows a resend may
  duplicate the message (harmless for jobs with a ``dedupe_key``);
- a future its caller cancelled (an ``asyncio`` waiter that gave up) is left alone by
  the poll thread, which would otherwise die on ``InvalidStateError``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as KafkaProducer

from conveyor.errors import DeliveryError, ProducerFatalError, UncertainDeliveryError
from conveyor.observability import librdkafka
from conveyor.producer.fatal import FatalWatch
from conveyor.producer.jobs import Outgoing
from conveyor.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_TIMEOUT = 30.0
#: librdkafka still batches what queues up while a produce request is in flight; a
#: linger on top only delays a job submitted alone (0.5-0.9 ms at 1,000 jobs/s and idle).
DEFAULT_LINGER_MS = 0
POLL_INTERVAL = 0.1
#: librdkafka expires timed-out messages on a ~1 s scan; flush waits this much longer.
EXPIRY_MARGIN = 3.0
MAX_QUEUED_MESSAGES = 100_000
PROBE_AFTER = 2.0
"""Seconds a delivery may take before a core that never reached a broker looks for one."""

DeliveryErrorCallback = Callable[[str, DeliveryError], None]

_TIMED_OUT = KafkaError._MSG_TIMED_OUT


@dataclasses.dataclass
class DeliveryStats:
    """Counts of what the producer sent (read them; they only grow)."""

    submitted: int = 0
    delivered: int = 0
    failed: int = 0


def producer_config(
    settings: Settings, *, delivery_timeout: float, linger_ms: int
) -> dict[str, Any]:
    """The confluent-kafka configuration conveyor's producers use."""
    return {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": linger_ms,
        "delivery.timeout.ms": int(delivery_timeout * 1000),
        # The Java client's default partitioner, so a key maps to the same partition
        # whichever Kafka client produced it (librdkafka defaults to CRC32).
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": MAX_QUEUED_MESSAGES,
    }


class DeliveryCore:
    """Sends encoded messages and tracks each one's delivery.

    Args:
        settings: Connection and security settings.
        delivery_timeout: Seconds a message may take to be acknowledged before it fails.
        linger_ms: How long librdkafka may wait to fill a batch.
        on_delivery_error: Called (from the poll thread) with the job id and the error of
            each failed delivery; when given, failures are not raised by ``flush``.
        fail_fast: Until a broker has answered, give up after ``PROBE_AFTER`` plus
            ``librdkafka.CONNECT_TIMEOUT`` seconds if none answers.
    """

    _watch: FatalWatch | None = None  # class default: test doubles skip __init__

    def __init__(
        self,
        settings: Settings,
        *,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        linger_ms: int = DEFAULT_LINGER_MS,
        on_delivery_error: DeliveryErrorCallback | None = None,
        fail_fast: bool = False,
    ) -> None:
        self.delivery_timeout = delivery_timeout
        self._bootstrap = settings.kafka_bootstrap
        self._fail_fast = fail_fast
        self._reached = False  # set by the first acknowledgement or answered probe
        self._failed_probe: tuple[float, str] | None = None  # when, and what it said
        self.stats = DeliveryStats()
        self._on_error = on_delivery_error
        self._failures: list[tuple[str, DeliveryError]] = []
        self._lock = threading.Lock()
        quiet, self._errors = librdkafka.client_config()
        self._watch = FatalWatch(
            self._errors,
            client=f"the Kafka producer for {settings.kafka_bootstrap}",
            remedy="restart the process (a worker reports unhealthy on /healthz) "
            "or create a new producer",
        )
        self._producer = KafkaProducer(
            {
                **producer_config(settings, delivery_timeout=delivery_timeout, linger_ms=linger_ms),
                **quiet,
                "error_cb": self._watch,
            }
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, name="conveyor-producer-poll", daemon=True
        )
        self._poller.start()

    @property
    def fatal_error(self) -> ProducerFatalError | None:
        """The fatal error that made this producer unusable, or None while it works."""
        return None if self._watch is None else self._watch.fatal

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(POLL_INTERVAL)
                if self._watch is not None:
                    self._watch.purge_once_broken(self._producer)
            except Exception:  # a callback's bug must not stop every later delivery report
                log.exception("a delivery report failed; the producer keeps polling")

    def send(self, messages: Sequence[Outgoing]) -> list[concurrent.futures.Future[None]]:
        """Queues messages for delivery and returns one future per message, in order.

        Raises:
            DeliveryError: The producer is closed, or the local queue stayed full for the
                whole delivery timeout.
        """
        if self._closed.is_set():
            raise DeliveryError("the producer is closed; create a new one to submit more jobs")
        if self.fatal_error is not None:
            raise self.fatal_error
        futures = []
        for message in messages:
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            # Running: a caller's cancel can no longer flip it under the poll thread.
            future.set_running_or_notify_cancel()
            self._produce(message, self._callback(message.job_id, future))
            futures.append(future)
        with self._lock:
            self.stats.submitted += len(messages)
        return futures

    def _produce(
        self, message: Outgoing, callback: Callable[[KafkaError | None, Message], None]
    ) -> None:
        deadline = time.monotonic() + self.delivery_timeout
        while True:
            try:
                self._producer.produce(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=message.headers,
                    on_delivery=callback,
                )
                return
            except BufferError as exc:
                # The local queue is full: wait for deliveries to drain it (backpressure).
                if time.monotonic() > deadline:
                    raise DeliveryError(
                        f"the local producer queue stayed full for {self.delivery_timeout:.0f}s; "
                        "is the broker reachable?"
                    ) from exc
                self._producer.flush(POLL_INTERVAL)
            except KafkaException as exc:
                fatal = None if self._watch is None else self._watch.refused(exc)
                if fatal is not None:
                    raise fatal from exc
                raise DeliveryError(f"could not queue job {message.job_id}: {exc}") from exc

    def _callback(
        self, job_id: str, future: concurrent.futures.Future[None]
    ) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self._reached = True
                with self._lock:
                    self.stats.delivered += 1
                _settle(future, None)
                return
            error = self._delivery_error(job_id, msg.topic(), err)
            with self._lock:
                self.stats.failed += 1
                if self._on_error is None:
                    self._failures.append((job_id, error))
            _settle(future, error)
            if self._on_error is not None:
                try:
                    self._on_error(job_id, error)
                except Exception:  # a faulty callback must not kill the poll thread
                    log.exception("on_delivery_error callback failed for job %s", job_id)

        return on_delivery

    def _delivery_error(self, job_id: str, topic: str | None, err: KafkaError) -> DeliveryError:
        """The error a failed delivery report stands for."""
        # Fatal, or purged because the producer is unusable.
        fatal = None if self._watch is None else self._watch.escalate(err)
        if fatal is not None:
            return fatal
        if err.code() == _TIMED_OUT:
            return UncertainDeliveryError(
                f"job {job_id} may or may not have been delivered to {topic}: it timed out "
                f"after {self.delivery_timeout:.0f}s ({err.str()}), possibly after the broker "
                "wrote it; sending it again may duplicate it (harmless with a dedupe_key)"
            )
        return DeliveryError(f"job {job_id} was not delivered to {topic}: {err.str()}")

    def wait(self, futures: Sequence[concurrent.futures.Future[None]]) -> None:
        """Blocks until every future is resolved; raises the first failure.

        Raises:
            DeliveryError: A message failed, or was not acknowledged in time, or no broker
                answered (see ``fail_fast``).
        """
        timeout = self.delivery_timeout + EXPIRY_MARGIN
        deadline = time.monotonic() + timeout
        if self._fail_fast and not self._reached:
            _done, pending = concurrent.futures.wait(futures, timeout=min(PROBE_AFTER, timeout))
            if pending:
                self.check_reachable(len(pending), timeout=deadline - time.monotonic())
        remaining = max(0.0, deadline - time.monotonic())
        _done, pending = concurrent.futures.wait(futures, timeout=remaining)
        if pending:
            raise DeliveryError(
                f"{len(pending)} message(s) not acknowledged within {self.delivery_timeout:.0f}s"
            )
        for future in futures:
            exc = future.exception()
            if exc is not None:
                self._forget(futures)
                raise exc

    def _forget(self, futures: Sequence[concurrent.futures.Future[None]]) -> None:
        # Failures the caller saw through wait() are reported; don't raise them again.
        seen = {id(f.exception()) for f in futures}
        with self._lock:
            self._failures = [(j, e) for j, e in self._failures if id(e) not in seen]

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every queued message is delivered or failed.

        Args:
            timeout: Seconds to wait; by default long enough for every queued message to be
                acknowledged or to expire with a delivery error.

        Raises:
            DeliveryError: Messages failed since the last flush (when no callback takes
                them), or were still queued when the timeout ran out.
        """
        if timeout is None:
            timeout = self.delivery_timeout + EXPIRY_MARGIN
        deadline = time.monotonic() + timeout
        if self._fail_fast and not self._reached and timeout > PROBE_AFTER:
            remaining = self._producer.flush(0 if self._probe_failed_lately() else PROBE_AFTER)
            if remaining:
                self.check_reachable(remaining, timeout=deadline - time.monotonic())
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            ids = ", ".join(job_id for job_id, _ in failures[:10])
            more = f" and {len(failures) - 10} more" if len(failures) > 10 else ""
            raise DeliveryError(
                f"{len(failures)} job(s) were not delivered ({ids}{more}): {failures[0][1]}"
            )
        if remaining:
            raise DeliveryError(f"{remaining} message(s) still undelivered after flush timed out")

    def check_reachable(
        self, undelivered: int, *, timeout: float = librdkafka.CONNECT_TIMEOUT
    ) -> None:
        """Asks the cluster for metadata; raises when no broker answers in time.

        Args:
            undelivered: Messages waiting, for the message.
            timeout: At most this long, and never longer than ``librdkafka.CONNECT_TIMEOUT``.

        Raises:
            DeliveryError: No broker answered within ``librdkafka.CONNECT_TIMEOUT``; the
                message names the address tried and ``CONVEYOR_KAFKA_BOOTSTRAP``.
        """
        if self._failed_probe is not None and self._probe_failed_lately():
            raise DeliveryError(f"{self._failed_probe[1]}; {undelivered} job(s) not delivered")
        try:
            self._producer.list_topics(timeout=max(0.1, min(timeout, librdkafka.CONNECT_TIMEOUT)))
        except KafkaException as exc:
            reason = self._errors.reason(default=str(exc.args[0]) if exc.args else "no answer")
            message = librdkafka.unreachable(self._bootstrap, reason)
            self._failed_probe = (time.monotonic(), message)
            self._drop_queued()
            raise DeliveryError(f"{message}; {undelivered} job(s) not delivered") from exc
        self._reached = True

    def _drop_queued(self) -> None:
        # Every queued message is reported as not delivered by the caller's error, so none
        # may still go out later (the caller may resubmit) or be raised again by flush().
        self._producer.purge()
        deadline = time.monotonic() + 1.0
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0.05)  # serves the purged messages' delivery reports
        with self._lock:
            self._failures.clear()

    def _probe_failed_lately(self) -> bool:
        # A close() right after a failed wait() need not ask the same question again.
        failed = self._failed_probe
        return failed is not None and time.monotonic() - failed[0] < librdkafka.CONNECT_TIMEOUT

    def close(self, timeout: float | None = None) -> None:
        """Flushes, then stops the poll thread. Idempotent."""
        if self._closed.is_set():
            return
        if self.fatal_error is not None:
            timeout = 0.0  # nothing queued will be delivered; don't wait for it
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._poller.join()
            if len(self._producer):
                # flush() has raised for these; close() would wait out their timeout.
                self._producer.purge()
                self._producer.poll(0)
            self._producer.close()  # drops its broker connections now, not at collection


def _settle(future: concurrent.futures.Future[None], error: BaseException | None) -> None:
    """Resolves a delivery's future unless it is already done (its caller gave up)."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:  # cancelled between the check and here
        log.debug("a delivery's waiter was cancelled before its report arrived")
