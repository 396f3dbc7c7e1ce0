"""The public job store: a job's status and history, cancel, and following its progress.

``JobStore`` reads what the workers record (``conveyor.consumer.status``) in the
``jobs`` and ``job_transitions`` tables::

    async with JobStore(settings) as store:
        status = await store.status(job_id)      # state, attempts, history, result, ...
        await store.cancel(job_id)               # queued: cancelled now; running: interrupted
        async for status in store.progress(job_id):
            print(status.state, status.progress)

A submitted job is ``queued`` as soon as the ledger (``conveyor.ledger``) has read it,
with its ``position`` in its partition; a job id nothing has recorded yet has state
``unknown``. Cancelling it writes a cancelled
row, so the worker that later consumes the job skips it. Cancelling a running job marks
the row (``cancel_requested_at``) and publishes a ``ControlCommand`` to the control topic
that every worker reads (``conveyor.consumer.commands``); the worker running the job
interrupts it and records it cancelled. The Kafka producer and the registry client for
that are created on the first such cancel, so reading statuses needs only Postgres.

The status types, :class:`JobStatus`, :class:`Transition` and :class:`Progress`, are
defined in ``conveyor.jobstatus`` and re-exported here. The SQL that reads a job is in
``conveyor.jobreads``, and the row a cancel writes or flags in ``conveyor.jobcancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import asyncpg

from conveyor import db, dlq, dlq_replay, jobcancel, jobreads
from conveyor.consumer.commands import ControlPublisher
from conveyor.consumer.status import AnyConnection, progress_channel
from conveyor.db import database_errors
from conveyor.errors import ConveyorError
from conveyor.jobstatus import UNKNOWN, JobStatus, Progress, Transition
from conveyor.ledger.offsets import WorkerOffsets
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES, Topology

log = logging.getLogger("conveyor.jobstore")

DEFAULT_POOL_SIZE = 5
DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between re-reads while following a job, in case a notification was missed."""


def parse_job_id(text: str) -> str:
    """Normalises a job id to the canonical UUID string.

    Raises:
        ValueError: ``text`` is not a UUID.
    """
    try:
        return str(uuid.UUID(str(text).strip()))
    except ValueError:
        raise ValueError(f"job id {text!r} is not a UUID") from None


def _marker(status: JobStatus) -> tuple[Any, ...]:
    return (status.state, status.attempts, status.progress, len(status.history))


class JobStore:
    """Reads job statuses, cancels jobs and follows their progress.

    Use it as ``async with JobStore(settings) as store``, or call :meth:`open` and
    :meth:`close`.

    Args:
        settings: Where Postgres (and, for cancelling running jobs, Kafka and the
            registry) are.
        pool_size: Most Postgres connections the store keeps open (plus one per
            :meth:`progress` follower).
        poll_interval: Seconds between re-reads while following a job.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self._settings = settings
        self._pool_size = pool_size
        self._poll_interval = poll_interval
        self._pool: asyncpg.Pool[Any] | None = None
        self._publisher: ControlPublisher | None = None
        self._offsets: WorkerOffsets | None = None

    async def open(self) -> None:
        """Opens the connection pool; does nothing if it is open.

        Raises:
            DatabaseUnavailableError: Postgres cannot be reached.
        """
        if self._pool is None:
            self._pool = await db.create_pool(self._settings, min_size=1, max_size=self._pool_size)

    async def close(self) -> None:
        """Closes the pool and, if one was created, the control producer. Idempotent."""
        pool, self._pool = self._pool, None
        publisher, self._publisher = self._publisher, None
        offsets, self._offsets = self._offsets, None
        if offsets is not None:
            offsets.close()
        try:
            if publisher is not None:
                await asyncio.to_thread(publisher.close)
        finally:
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> JobStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _require_pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise ConveyorError("the JobStore is not open; use `async with JobStore(settings)`")
        return self._pool

    async def status(self, job_id: str, *, position: bool = True) -> JobStatus:
        """The job's state, attempts, full history, result, last error and progress.

        For a job still waiting for its first attempt, recorded by the ledger, it also
        asks the broker (one admin request) for the worker group's committed offset of
        the job's partition, and reports the job's ``position``: the jobs ahead of it
        there that no worker has finished. A broker that does not answer leaves it None.

        Args:
            job_id: The job.
            position: Ask the broker for a queued job's position (needs Kafka settings).

        Returns:
            The status; state ``unknown`` (empty history, 0 attempts) for a job id
            nothing has recorded.

        Raises:
            ValueError: ``job_id`` is not a UUID.
            DatabaseUnavailableError: Postgres cannot be reached.
            MigrationError: The schema is not migrated.
        """
        job_id = parse_job_id(job_id)
        with database_errors(f"reading job {job_id}"):
            async with self._require_pool().acquire() as conn:
                row, history = await jobreads.read_row(conn, job_id)
        if row is None:
            return JobStatus.unknown(job_id)
        status = jobreads.status_from(row, history)
        place = jobreads.queue_place(row) if position else None
        if place is None:
            return status
        return dataclasses.replace(status, position=await self._position(*place))

    async def _position(self, topic: str, partition: int, offset: int) -> int | None:
        topology = Topology.from_settings(self._settings)
        priority = next((p for p in PRIORITIES if topology.job_topic(p) == topic), None)
        if priority is None:  # read under another topic prefix
            return None
        if self._offsets is None:
            self._offsets = WorkerOffsets(self._settings)
        return await asyncio.to_thread(
            self._offsets.position, topology.consumer_group(priority), topic, partition, offset
        )

    async def cancel(self, job_id: str, *, reason: str | None = None) -> str:
        """Cancels a job that has not ended.

        A job not yet run (scheduled, queued, or not seen by any worker) is cancelled at
        once: a scheduled one is never released, a queued one is skipped when a worker
        consumes it. Workers hear of a queued job's cancel on the control topic too, as
        one may have read its row ahead of running it (``consumer.unclaimed``); that
        command is best effort (the row decides, and a failure to send it is logged).
        A running job is interrupted by the worker
        running it, through a command on the control topic; it stays ``processing``
        until that worker records it cancelled. A job that ended is left as it is.

        Args:
            job_id: The job.
            reason: Why, kept in the job's history.

        Returns:
            The job's state after the call: ``cancelled``, ``processing`` (the cancel
            is on its way to the worker), or the final state it already had.

        Raises:
            ValueError: ``job_id`` is not a UUID.
            DatabaseUnavailableError: Postgres cannot be reached.
            DeliveryError: The control command was not acknowledged (the request is
                recorded; calling cancel again resends it).
            RegistryUnavailableError: The schema registry did not answer.
        """
        job_id = parse_job_id(job_id)
        with database_errors(f"cancelling job {job_id}"):
            async with self._require_pool().acquire() as conn, conn.transaction():
                state, was = await jobcancel.cancel_row(
                    conn, job_id, jobcancel.cancel_error(reason)
                )
        if state == "processing":
            await asyncio.to_thread(self._control().cancel, job_id, reason)
        elif was in ("queued", None):
            try:
                await asyncio.to_thread(self._control().cancel, job_id, reason)
            except ConveyorError as exc:
                log.warning("job %s is cancelled; telling the workers failed: %s", job_id, exc)
        return state

    def _control(self) -> ControlPublisher:
        if self._publisher is None:
            self._publisher = ControlPublisher(self._settings)
        return self._publisher

    async def dlq_list(
        self,
        *,
        type: str | None = None,
        tenant: str | None = None,
        pending_only: bool = True,
        limit: int = dlq.DEFAULT_LIST_LIMIT,
    ) -> list[dlq.DlqEntry]:
        """DLQ entries, oldest first; see :func:`conveyor.dlq.list_entries`."""
        return await dlq.list_entries(
            self._require_pool(), type=type, tenant=tenant, pending_only=pending_only, limit=limit
        )

    async def dlq_entry_of(self, job_id: str) -> int:
        """The DLQ entry number of a job (its pending entry, else its latest).

        Raises:
            DlqEntryNotFound: The job has no DLQ entry.
        """
        return await dlq.find_entry_id(self._require_pool(), parse_job_id(job_id))

    async def dlq_show(self, entry_id: int) -> dlq.DlqEntry:
        """One DLQ entry; see :func:`conveyor.dlq.get_entry`.

        Raises:
            DlqEntryNotFound: No row has this id.
        """
        return await dlq.get_entry(self._require_pool(), entry_id)

    async def replay(self, entry_id: int) -> str:
        """Resubmits a dead job once and returns its id; see :func:`conveyor.dlq_replay.replay`.

        Raises:
            DlqEntryNotFound: No row has this id.
            ReplayRefused: The entry was replayed already, holds no job, or its job is
                not failed now (completed, or queued or running again).
            DeliveryError: The broker did not acknowledge the job; nothing changed.
        """
        async with dlq.RecordPublisher(self._settings, fail_fast=True) as publisher:
            return await dlq_replay.replay(
                self._require_pool(), publisher, self._settings, entry_id
            )

    async def replay_all(
        self,
        *,
        type: str,
        tenant: str | None = None,
        on_progress: dlq_replay.ProgressCallback | None = None,
    ) -> list[str]:
        """Replays every pending entry of a job type; see :func:`conveyor.dlq_replay.replay_all`."""
        async with dlq.RecordPublisher(self._settings, fail_fast=True) as publisher:
            return await dlq_replay.replay_all(
                self._require_pool(),
                publisher,
                self._settings,
                type=type,
                tenant=tenant,
                on_progress=on_progress,
            )

    async def purge(self) -> tuple[int, int]:
        """Deletes finished jobs (after the job topics' retention plus 1 day, so 8 days by
        default) and replayed DLQ rows (after 30 days), in batches; see
        :func:`conveyor.retention.purge`.

        Returns:
            (jobs deleted, DLQ rows deleted); (0, 0) when another process purges now.
        """
        return await dlq.purge(
            self._require_pool(), job_retention_days=self._settings.job_retention_days
        )

    async def progress(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Follows a job: yields its status now, then on each change of state or progress.

        Changes are announced by Postgres notifications, with a re-read every
        ``poll_interval`` seconds in case one is missed. Each follower holds one
        dedicated connection; close the iterator (``contextlib.aclosing``) or run it to
        the end to release it. A job still ``unknown`` is waited for.

        Yields:
            The job's status, first as it is, then after every change; the last one
            yielded is final (complete, failed or cancelled), and then the iterator ends.

        Raises:
            ValueError: ``job_id`` is not a UUID.
            DatabaseUnavailableError: Postgres cannot be reached or the connection was lost.
        """
        job_id = parse_job_id(job_id)
        changed = asyncio.Event()

        def on_notify(_conn: AnyConnection, _pid: int, _channel: str, payload: object) -> None:
            # One notification names every job a statement changed, joined by commas.
            if isinstance(payload, str) and job_id in payload.split(","):
                changed.set()

        conn = await db.connect(self._settings)
        try:
            with database_errors(f"following job {job_id}"):
                await conn.add_listener(progress_channel(self._settings.database_schema), on_notify)
            seen: tuple[Any, ...] | None = None
            while True:
                changed.clear()
                with database_errors(f"following job {job_id}"):
                    status = await jobreads.read_status(conn, job_id)
                if _marker(status) != seen:
                    seen = _marker(status)
                    yield status
                if status.is_final:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await changed.wait()
        finally:
            await _close_quietly(conn)


async def _close_quietly(conn: asyncpg.Connection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=5.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()


__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_POOL_SIZE",
    "UNKNOWN",
    "JobStatus",
    "JobStore",
    "Progress",
    "Transition",
    "parse_job_id",
]
