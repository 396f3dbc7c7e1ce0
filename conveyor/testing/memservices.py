"""The services around a worker, in process: the retry relay, the scheduler and the DLQ sink.

``TestWorker`` (``conveyor.testing.inprocess``) runs them as steps of its loop, over its
:class:`~conveyor.testing.memlog.MemoryLog` and on its fake clock, reduced to their
decisions:

- the relay moves each due record of a retry topic to its job topic, and holds a
  partition behind a record not yet due (on a broker the relay moves a far-future one on
  after its rung's delay; this one does not, since its clock skips ahead);
- the scheduler holds delayed and ``run_at`` jobs as ``scheduled`` in
  :class:`~conveyor.testing.memstatus.MemoryStatus` and releases them to their priority
  topic when due, unless they were cancelled meanwhile;
- the DLQ sink turns each dead record into a ``DlqEntry`` in
  :class:`~conveyor.testing.memdlq.MemoryDlq`, marks the job failed unless a lease is
  live, and appends one ``JobFailed`` event.

:class:`MemoryServices` also keeps every consumer's position in the log, so the worker's
own fetch reads through :meth:`MemoryServices.unread` too.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from conveyor.consumer import dlq_rows
from conveyor.errors import DeserializationError
from conveyor.schemas.contracts import DLQ_RECORD, JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.testing.clock import FakeClock
from conveyor.testing.memdlq import MemoryDlq
from conveyor.testing.memlog import MemoryLog, Record
from conveyor.testing.memschedule import MemorySchedule
from conveyor.testing.memstatus import MemoryStatus
from conveyor.topology.model import PRIORITIES, Topology

log = logging.getLogger("conveyor.testing")

_FALLBACK_PRIORITY = "normal"


class MemoryServices:
    """The relay, scheduler and DLQ sink of one ``TestWorker``, run a step at a time.

    Args:
        log: The in-memory log they read and append to.
        serde: Decodes envelopes and DLQ records (the worker's mock registry).
        topology: Names the topics.
        clock: Decides what is due.
        status: Where scheduled jobs and failed ones are recorded.
        dlq: Where dead records become entries.
        events: Where ``JobFailed`` events are appended, as the DLQ sink would publish them.
    """

    def __init__(
        self,
        *,
        log: MemoryLog,
        serde: Serde,
        topology: Topology,
        clock: FakeClock,
        status: MemoryStatus,
        dlq: MemoryDlq,
        events: list[dict[str, Any]],
    ) -> None:
        self._log = log
        self._serde = serde
        self._topology = topology
        self._clock = clock
        self._status = status
        self._dlq = dlq
        self._events = events
        self._positions: dict[tuple[str, int], int] = {}
        self._due: dict[tuple[str, int, int], dt.datetime | None] = {}
        self._scheduled: MemorySchedule[Record] = MemorySchedule()

    def unread(self, topic: str) -> list[Record]:
        """Unread records of every partition of ``topic``, partition by partition."""
        return [
            record
            for partition in range(self._log.partitions(topic))
            for record in self._log.read(
                topic, partition, self._positions.get((topic, partition), 0)
            )
        ]

    def consumed(self, record: Record) -> None:
        """Marks ``record`` read: :meth:`unread` of its partition starts after it."""
        self._positions[record.topic, record.partition] = record.offset + 1

    def _not_before(self, record: Record) -> dt.datetime | None:
        """When a retry-topic record is due, on the fake clock."""
        where = (record.topic, record.partition, record.offset)
        if where not in self._due:
            try:
                envelope = self._serde.decode(JOB_ENVELOPE, record.topic, record.value)
            except DeserializationError:
                self._due[where] = None
            else:
                not_before = envelope.get("not_before")
                self._due[where] = (
                    None
                    if not_before is None
                    else not_before + dt.timedelta(seconds=record.skipped)
                )
        return self._due[where]

    async def relay(self) -> None:
        """The retry relay: moves each due record of a retry topic to its job topic."""
        now = self._clock.now()
        held: set[int] = set()
        for rung in self._topology.retry_topics:
            held.clear()
            for record in self.unread(rung.name):
                if record.partition in held:
                    continue
                not_before = self._not_before(record)
                if not_before is not None and not_before > now:
                    held.add(record.partition)  # the relay holds a partition behind it
                    continue
                self.consumed(record)
                try:
                    envelope = self._serde.decode(JOB_ENVELOPE, record.topic, record.value)
                except DeserializationError as exc:
                    log.error("skipping undecodable retry message %s: %s", record.offset, exc)
                    continue
                priority = envelope.get("priority")
                if priority not in PRIORITIES:
                    priority = _FALLBACK_PRIORITY
                topic = self._topology.job_topic(str(priority))
                self._log.append(topic, record.key, record.value, record.headers)

    def schedule(self) -> None:
        """The scheduler: stores new delayed jobs, then releases those due, in due order."""
        topic = self._topology.scheduled_topic
        for record in self.unread(topic):
            self.consumed(record)
            try:
                envelope = self._serde.decode(JOB_ENVELOPE, topic, record.value)
            except DeserializationError as exc:
                log.error("skipping undecodable scheduled message %s: %s", record.offset, exc)
                continue
            due = envelope.get("not_before") or self._clock.now()
            if self._status.schedule(envelope, due):
                self._scheduled.add(due, str(envelope["job_id"]), record)
        for job_id, record in self._scheduled.pop_due(self._clock.now()):
            if not self._status.release(job_id):
                continue  # cancelled before its release
            envelope = self._serde.decode(JOB_ENVELOPE, record.topic, record.value)
            priority = envelope.get("priority")
            if priority not in PRIORITIES:
                priority = _FALLBACK_PRIORITY
            target = self._topology.job_topic(str(priority))
            self._log.append(target, record.key, record.value, record.headers)

    def next_due(self) -> float | None:
        """Seconds until the next retry, delayed job or in-place retry is due, if any."""
        now = self._clock.now()
        waits = []
        if (scheduled := self._scheduled.next_due()) is not None:
            waits.append((scheduled - now).total_seconds())
        for rung in self._topology.retry_topics:
            for partition in range(self._log.partitions(rung.name)):
                position = self._positions.get((rung.name, partition), 0)
                head = self._log.read(rung.name, partition, position)[:1]
                if head:
                    not_before = self._not_before(head[0])
                    waits.append(0.0 if not_before is None else (not_before - now).total_seconds())
        sleeper = self._clock.next_deadline()
        if sleeper is not None:
            waits.append(sleeper)
        if not waits:
            return None
        return max(min(waits), 0.001)

    def sink(self) -> None:
        """The DLQ sink: one ``DlqEntry`` and one ``JobFailed`` event per dead record."""
        topic = self._topology.dlq_topic
        for record in self.unread(topic):
            self.consumed(record)
            try:
                dead = self._serde.decode(DLQ_RECORD, topic, record.value)
            except DeserializationError as exc:
                log.error("skipping undecodable DLQ message %s: %s", record.offset, exc)
                continue
            entry = self._dlq.add(dead)
            if dead.get("job_id") is not None:
                self._status.fail_unrecorded(dead, dlq_rows.last_error(dead))
                self._events.append(dlq_rows.job_failed_event(dead, entry.id))
