"""The worker's ledger in a child process (``WorkerOptions.ledger_process``, the default):
it records jobs while the worker runs, stops with the worker or when the worker dies,
and a child that dies makes the worker's liveness fail."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import JobContext, JobStore, Producer, Settings, Worker
from conveyor.ledger import LedgerExitedError, LedgerProcess
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

OPTIONS = dataclasses.replace(
    TEST_OPTIONS, run_relay=False, run_dlq_sink=False, run_scheduler=False, ledger_process=True
)
TIMINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


def ledger_children() -> list[int]:
    """The pids of this process's children that run the ledger."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"conveyor.ledger\0" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_the_workers_ledger_child_queues_jobs_and_stops_with_the_worker(
    live: Settings,
) -> None:
    # The worker runs only high jobs: a normal job stays queued, recorded by the ledger.
    worker = Worker(live, priorities=["high"], options=OPTIONS)

    @worker.handler("ledger.any")
    async def handle(ctx: JobContext, payload: Any) -> None:
        return None

    async with running(worker):
        await eventually(lambda: "ledger" in worker._helpers, what="the worker to start")
        [child] = ledger_children()
        with Producer(live) as producer:
            job_id = producer.submit("ledger.any", {}, priority="normal", wait=True)
        async with JobStore(live) as store:

            async def queued() -> bool:
                return (await store.status(job_id)).state == "queued"

            await eventually(queued, what="the child ledger to record the job")
        assert worker.helper_problem() is None
    await eventually(lambda: not alive(child), what="the ledger child to exit")


async def test_a_ledger_child_that_dies_fails_the_workers_liveness(live: Settings) -> None:
    worker = Worker(live, priorities=["high"], options=OPTIONS)
    async with running(worker):
        await eventually(lambda: "ledger" in worker._helpers, what="the worker to start")
        [child] = ledger_children()
        os.kill(child, signal.SIGKILL)

        def named() -> bool:
            problem = worker.helper_problem()
            return problem is not None and "the ledger stopped" in problem

        await eventually(named, what="liveness to name the ledger")
        assert "LedgerExitedError" in (worker.helper_problem() or "")


async def test_the_ledger_child_stops_by_itself_when_its_parent_goes(live: Settings) -> None:
    """A worker killed with kill -9 closes the child's stdin: the child commits and exits."""
    ledger = LedgerProcess(live, **TIMINGS)
    await ledger.start()
    process = ledger._process
    assert process is not None
    assert process.stdin is not None
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 60) == 0


async def test_a_ledger_child_that_cannot_start_raises_at_start(live: Settings) -> None:
    unreachable = live.replace(database_url="postgresql://nobody@127.0.0.1:1/none")
    ledger = LedgerProcess(unreachable, **TIMINGS)
    with pytest.raises(LedgerExitedError, match="exited with code 1"):
        await ledger.start()


async def test_a_child_that_prints_before_it_starts_still_starts(
    live: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output on the child's stdout before its start line (a site hook, a library) is
    skipped, not taken for a failed start."""
    (tmp_path / "sitecustomize.py").write_text("print('hello from a site hook')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    ledger = LedgerProcess(live, **TIMINGS)
    await ledger.start()
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(ledger.run(stop), 60)
    assert ledger._process is not None
    assert ledger._process.returncode == 0


#: Starts a LedgerProcess with Ctrl-C handled by itself, as ``conveyor dev`` does, then stops it.
CTRL_C_PARENT = """
import asyncio, pickle, signal, sys
from conveyor.ledger import LedgerProcess

async def main():
    settings, timings = pickle.load(sys.stdin.buffer)
    ledger = LedgerProcess(settings, **timings)
    await ledger.start()
    stop = asyncio.Event()
    stop.set()
    await ledger.run(stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test's last Ctrl-C may still come
    print("stopped", ledger._process.returncode, flush=True)

signal.signal(signal.SIGINT, lambda *_: None)  # a handler, not SIG_IGN: exec resets it
print("ready", flush=True)
asyncio.run(main())
"""


def test_a_ctrl_c_while_the_child_starts_reaches_only_the_worker(live: Settings) -> None:
    """Ctrl-C goes to a terminal's whole process group. The child has a group of its own,
    so it cannot die of a Ctrl-C that comes before it set itself up; the worker stops it."""
    with subprocess.Popen(
        [sys.executable, "-c", CTRL_C_PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    ) as parent:
        out, into = parent.stdout, parent.stdin
        assert out is not None
        assert into is not None
        said: list[bytes] = []
        try:
            assert out.readline() == b"ready\n"
            into.write(pickle.dumps((live, TIMINGS)))
            into.close()
            reader = threading.Thread(target=lambda: said.append(out.readline()))
            reader.start()
            deadline = time.monotonic() + 60
            while reader.is_alive() and time.monotonic() < deadline:
                os.killpg(parent.pid, signal.SIGINT)  # as a terminal does, again and again
                time.sleep(0.02)
            reader.join(timeout=5)
        finally:
            if parent.poll() is None and not said:
                parent.kill()
    assert said == [b"stopped 0\n"]  # the child stopped when told, with its commit
    assert parent.returncode == 0
