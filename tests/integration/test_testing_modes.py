"""The in-process mode and the real-stack mode behave the same for the same handlers.

Every test here runs twice: once in a ``TestWorker`` (in-memory log, fake clock) and once
with a real ``Worker`` on the session's broker, Postgres and registry. Each asserts the
same outcome, read through the same ``JobStatus`` and ``DlqEntry`` types.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from conveyor import (
    AsyncProducer,
    JobContext,
    JobStore,
    PermanentError,
    RetryPolicy,
    Settings,
    Worker,
    WorkerOptions,
)
from conveyor.dlq import DlqEntry
from conveyor.jobstatus import JobStatus, Progress
from conveyor.testing import TestWorker, drain, running
from tests.worker_helpers import eventually

FAST_RETRY = RetryPolicy(max_attempts=3, initial=0.2, maximum=0.2, jitter=0)
START_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Typed:
    """A payload contract: the handler declares it, the producer sends plain JSON."""

    n: int


@dataclasses.dataclass
class Handlers:
    """What the handlers saw, per test."""

    calls: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    running: set[str] = dataclasses.field(default_factory=set)
    overlaps: int = 0
    healed: bool = False
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def saw(self, job_type: str, value: Any) -> None:
        self.calls.setdefault(job_type, []).append(value)


def build_worker(settings: Settings, seen: Handlers) -> Worker:
    """One worker with a handler per behaviour under test."""
    worker = Worker(
        settings,
        priorities=["normal"],
        concurrency=8,
        options=WorkerOptions(commit_interval=0.1, purge_interval=None),
    )

    @worker.handler("t.ok")
    async def ok(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        seen.saw("t.ok", payload)
        return {"doubled": payload["n"] * 2}

    @worker.handler("t.flaky", retry=FAST_RETRY)
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> str:
        seen.saw("t.flaky", ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return "third time"

    @worker.handler("t.permanent", retry=FAST_RETRY)
    async def permanent(ctx: JobContext, payload: dict[str, Any]) -> str:
        seen.saw("t.permanent", ctx.attempt)
        if not seen.healed:
            raise PermanentError("the account is closed")
        return "reopened"

    @worker.handler("t.typed", schema=Typed)
    async def typed(ctx: JobContext, payload: dict[str, Any]) -> int:
        seen.saw("t.typed", payload)
        return int(payload["n"])

    @worker.handler("t.blocking")
    async def blocking(ctx: JobContext, payload: dict[str, Any]) -> None:
        seen.saw("t.blocking", ctx.attempt)
        seen.started.set()
        await asyncio.Event().wait()  # until cancelled

    @worker.handler("t.progress")
    async def progress(ctx: JobContext, payload: dict[str, Any]) -> str:
        await ctx.report_progress(40, "reading")
        await ctx.report_progress(80, "writing")
        return "done"

    @worker.handler("t.ordered", ordering="key", retry=FAST_RETRY)
    async def ordered(ctx: JobContext, payload: dict[str, Any]) -> None:
        if ctx.key in seen.running:
            seen.overlaps += 1
        seen.running.add(ctx.key)
        try:
            seen.saw(f"t.ordered.{ctx.key}", (payload["n"], ctx.attempt))
            await asyncio.sleep(0)  # let other keys' jobs interleave
            if payload["n"] == 0 and ctx.attempt == 1:
                raise RuntimeError("the first job of a key fails once")
        finally:
            seen.running.discard(ctx.key)

    return worker


class Mode(Protocol):
    """What a test does, whichever mode runs it."""

    producer: AsyncProducer

    async def settle(self) -> None: ...
    async def status(self, job_id: str) -> JobStatus: ...
    async def cancel(self, job_id: str) -> str: ...
    async def dlq(self) -> list[DlqEntry]: ...
    async def replay(self, entry_id: int) -> str: ...


class InProcess:
    def __init__(self, tw: TestWorker) -> None:
        self.tw = tw
        self.producer = tw.async_producer()

    async def settle(self) -> None:
        await self.tw.settle()

    async def status(self, job_id: str) -> JobStatus:
        return await self.tw.status(job_id)

    async def cancel(self, job_id: str) -> str:
        return await self.tw.cancel(job_id)

    async def dlq(self) -> list[DlqEntry]:
        return await self.tw.dlq_list()

    async def replay(self, entry_id: int) -> str:
        return await self.tw.replay(entry_id)


class RealStack:
    def __init__(self, worker: Worker, producer: AsyncProducer, store: JobStore) -> None:
        self.worker = worker
        self.producer = producer
        self.store = store

    async def settle(self) -> None:
        await drain(self.worker, timeout=60)

    async def status(self, job_id: str) -> JobStatus:
        return await self.store.status(job_id)

    async def cancel(self, job_id: str) -> str:
        return await self.store.cancel(job_id)

    async def dlq(self) -> list[DlqEntry]:
        return await self.store.dlq_list()

    async def replay(self, entry_id: int) -> str:
        return await self.store.replay(entry_id)


@pytest.fixture
def seen() -> Handlers:
    return Handlers()


@pytest.fixture(params=["in_process", "real_stack"])
def mode_settings(request: pytest.FixtureRequest) -> tuple[str, Settings]:
    """The mode, and its settings: defaults in process, the plugin's isolated ones else."""
    if request.param == "in_process":
        return request.param, Settings(metrics_port=0)
    return request.param, request.getfixturevalue("conveyor_settings")


@pytest.fixture
async def mode(mode_settings: tuple[str, Settings], seen: Handlers) -> AsyncIterator[Mode]:
    name, settings = mode_settings
    if name == "in_process":
        async with TestWorker(build_worker(settings, seen)) as tw:
            yield InProcess(tw)
        return
    worker = build_worker(settings, seen)
    async with (
        running(worker, start_timeout=START_TIMEOUT),
        AsyncProducer(settings) as producer,
        JobStore(settings) as store,
    ):
        yield RealStack(worker, producer, store)


def states(status: JobStatus) -> list[str]:
    return [t.state for t in status.history]


async def test_a_job_completes_with_its_result_and_history(mode: Mode, seen: Handlers) -> None:
    job_id = await mode.producer.submit("t.ok", {"n": 21})
    await mode.settle()
    status = await mode.status(job_id)
    assert (status.state, status.result, status.attempts) == ("complete", {"doubled": 42}, 1)
    assert states(status) == ["queued", "processing", "complete"]
    assert seen.calls["t.ok"] == [{"n": 21}]


async def test_a_failing_job_is_retried_then_completes(mode: Mode, seen: Handlers) -> None:
    job_id = await mode.producer.submit("t.flaky", {})
    await mode.settle()
    status = await mode.status(job_id)
    assert (status.state, status.result, status.attempts) == ("complete", "third time", 3)
    assert states(status) == [
        "queued",
        "processing",
        "queued",
        "processing",
        "queued",
        "processing",
        "complete",
    ]
    assert [t.error["message"] for t in status.history if t.error] == [
        "attempt 1 fails",
        "attempt 2 fails",
    ]
    assert seen.calls["t.flaky"] == [1, 2, 3]
    assert await mode.dlq() == []


async def test_a_permanent_error_goes_to_the_dlq_at_once(mode: Mode, seen: Handlers) -> None:
    job_id = await mode.producer.submit("t.permanent", {"account": 7})
    await mode.settle()
    status = await mode.status(job_id)
    assert (status.state, status.attempts) == ("failed", 1)
    assert status.last_error is not None
    assert status.last_error["reason"] == "Permanent"
    [entry] = await mode.dlq()
    assert (entry.original_job_id, entry.error_reason, entry.attempts) == (job_id, "Permanent", 1)
    assert [e["message"] for e in entry.error_history] == ["the account is closed"]
    assert seen.calls["t.permanent"] == [1]


async def test_a_replayed_dead_job_runs_again_under_its_own_id(mode: Mode, seen: Handlers) -> None:
    job_id = await mode.producer.submit("t.permanent", {"account": 8})
    await mode.settle()
    [entry] = await mode.dlq()
    seen.healed = True
    assert await mode.replay(entry.id) == job_id
    await mode.settle()
    status = await mode.status(job_id)
    assert (status.state, status.result) == ("complete", "reopened")
    assert states(status) == ["queued", "processing", "failed", "queued", "processing", "complete"]
    assert await mode.dlq() == []
    assert seen.calls["t.permanent"] == [1, 1]


async def test_a_payload_that_breaks_the_handlers_contract_is_dead_lettered_unrun(
    mode: Mode, seen: Handlers
) -> None:
    job_id = await mode.producer.submit("t.typed", {"n": "not a number"})
    await mode.settle()
    status = await mode.status(job_id)
    assert (status.state, status.attempts) == ("failed", 1)
    [entry] = await mode.dlq()
    assert (entry.original_job_id, entry.error_reason) == (job_id, "Validation")
    assert "t.typed" not in seen.calls


async def test_cancel_interrupts_a_running_job(mode: Mode, seen: Handlers) -> None:
    job_id = await mode.producer.submit("t.blocking", {})
    settling = asyncio.create_task(mode.settle())
    await asyncio.wait_for(seen.started.wait(), START_TIMEOUT)

    async def shown_running() -> bool:
        # A worker claims a job (shows it processing) once its handler runs past
        # CLAIM_AFTER; before that it is queued, and a cancel is a queued job's.
        return (await mode.status(job_id)).state == "processing"

    await eventually(shown_running, timeout=START_TIMEOUT, what="the job shown processing")
    assert await mode.cancel(job_id) == "processing"
    await asyncio.wait_for(settling, 60)
    status = await mode.status(job_id)
    assert status.state == "cancelled"
    assert states(status) == ["queued", "processing", "cancelled"]
    assert seen.calls["t.blocking"] == [1]


async def test_progress_reports_are_kept_on_the_job(mode: Mode) -> None:
    job_id = await mode.producer.submit("t.progress", {})
    await mode.settle()
    status = await mode.status(job_id)
    assert status.state == "complete"
    assert status.progress is not None
    assert (status.progress.pct, status.progress.message) == (80.0, "writing")
    assert isinstance(status.progress, Progress)


async def test_jobs_of_one_key_run_one_at_a_time_in_order_through_a_retry(
    mode: Mode, seen: Handlers
) -> None:
    ids = [
        await mode.producer.submit("t.ordered", {"n": n}, key=key)
        for n in range(4)
        for key in ("a", "b")
    ]
    await mode.settle()
    for key in ("a", "b"):
        assert seen.calls[f"t.ordered.{key}"] == [(0, 1), (0, 2), (1, 1), (2, 1), (3, 1)]
    assert seen.overlaps == 0
    assert {(await mode.status(i)).state for i in ids} == {"complete"}


async def test_a_duplicate_dedupe_key_is_the_same_job_and_runs_once(
    mode: Mode, seen: Handlers
) -> None:
    first = await mode.producer.submit("t.ok", {"n": 1}, dedupe_key="welcome-42")
    second = await mode.producer.submit("t.ok", {"n": 1}, dedupe_key="welcome-42")
    await mode.settle()
    assert first == second
    assert (await mode.status(first)).state == "complete"
    assert seen.calls["t.ok"] == [{"n": 1}]
