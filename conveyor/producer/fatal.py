"""librdkafka's *fatal* errors, one detection for every confluent-kafka producer conveyor runs.

An idempotent producer whose guarantees broke (a sequence gap, a fenced or unknown
producer id) reports a fatal error, through its ``error_cb`` or a delivery report whose
``err.fatal()`` is true, and sends nothing again. :class:`FatalWatch` is that
``error_cb``: it still feeds :class:`~conveyor.observability.librdkafka.ClientErrors`,
keeps the first fatal error as a :class:`~conveyor.errors.ProducerFatalError`, and
turns the later reports and ``produce`` refusals of a broken producer into that same
error. Both the job producer's ``DeliveryCore`` and the relay's ``Republisher`` use it.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as KafkaProducer

from conveyor.errors import ProducerFatalError
from conveyor.observability import librdkafka

log = logging.getLogger(__name__)

#: librdkafka's fatal error code: the producer's guarantees are broken and it sends no more.
FATAL = KafkaError._FATAL


def is_fatal(err: KafkaError) -> bool:
    """Whether librdkafka reports the error as fatal (flagged, or the ``_FATAL`` code)."""
    return bool(err.fatal()) or err.code() == FATAL


class FatalWatch:
    """A producer's ``error_cb``: feeds ``ClientErrors`` and keeps the first fatal error.

    It holds no reference to its producer or its owner, so the client is freed as soon as
    it is dropped.

    Args:
        errors: The collector of the client's errors (its useful ``reason``).
        client: The producer, as the error names it ("the Kafka producer for host:9092").
        remedy: What to do, ending the error's message.
    """

    def __init__(self, errors: librdkafka.ClientErrors, *, client: str, remedy: str) -> None:
        self._errors = errors
        self._client = client
        self._remedy = remedy
        self._purged = False
        self.fatal: ProducerFatalError | None = None

    def __call__(self, err: KafkaError) -> None:
        self._errors(err)
        if is_fatal(err):
            self.note_fatal(err)

    def note_fatal(self, err: KafkaError) -> ProducerFatalError:
        """Records a fatal error (the first one wins) and returns the error to raise."""
        if self.fatal is None:
            self.fatal = ProducerFatalError(
                f"{self._client} hit a fatal error and sends no more: {err.str()} "
                f"({err.name()}); {self._remedy}"
            )
            log.error("%s", self.fatal)
        return self.fatal

    def escalate(self, err: KafkaError) -> ProducerFatalError | None:
        """The error a failed delivery report stands for when the producer is broken.

        Returns:
            The fatal error if this report is fatal, or if the producer already was (its
            queue purged); None for an ordinary failure the caller words itself.
        """
        if is_fatal(err):
            return self.note_fatal(err)
        return self.fatal

    def refused(self, exc: KafkaException) -> ProducerFatalError | None:
        """The fatal error a ``produce`` refusal stands for, or None when it is not fatal."""
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and is_fatal(error):
            return self.note_fatal(error)
        return None

    def purge_once_broken(self, producer: KafkaProducer) -> None:
        """Purges the producer once after a fatal error (from its poll thread).

        Nothing queued can be delivered any more: its delivery reports fail it at once
        (``escalate`` names the fatal error) instead of at the delivery timeout.
        """
        if self.fatal is not None and not self._purged:
            self._purged = True
            producer.purge()
