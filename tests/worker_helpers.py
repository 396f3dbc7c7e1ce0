"""Running a real Worker inside a test, and waiting on what it does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from conveyor import Settings
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.topology import admin

#: Short Kafka timeouts so group joins and rebalances are quick in tests.
TEST_OPTIONS = WorkerOptions(
    commit_interval=0.2,
    session_timeout_ms=6000,
    heartbeat_interval_ms=1000,
    shutdown_grace=10.0,
    revoke_timeout=10.0,
    # A child process per test worker would start a Python of its own each time; the
    # ledger's process mode has its own tests (tests/integration/test_ledger_process.py).
    ledger_process=False,
)


async def prepare(settings: Settings, registry_url: str) -> Settings:
    """The test's settings with the registry, the topology applied and migrations run."""
    from conveyor import migrations

    live = settings.replace(schema_registry_url=registry_url)
    await asyncio.to_thread(admin.apply, live)
    await migrations.migrate(live)
    return live


@contextlib.asynccontextmanager
async def running(worker: Worker, *, stop_timeout: float = 60.0) -> AsyncIterator[Worker]:
    """Runs the worker for the block, then stops it and waits for it to leave."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, stop_timeout)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 60.0,
    what: str = "condition",
) -> None:
    """Waits until ``check()`` is true, polling with a deadline; fails with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)  # the poll interval of a deadline-bounded wait


class KeyWatch:
    """Records the handler runs of one key and the most that ever overlapped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[int] = []
        self.now = 0
        self.most = 0

    async def run(self, n: int) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        self.runs.append(n)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.now -= 1
