"""Testing helpers for handler authors: an in-process mode and a real-stack mode.

In process (no broker, no registry, no Postgres unless ``ctx.db`` needs one)::

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("email.send", {"to": "ada@example.com"})
        await tw.drain()                      # runs what is due now
        await tw.advance(300)                 # skips 5 minutes: retries fall due
        status = await tw.status(job_id)      # a conveyor.JobStatus

On a real stack, with the pytest plugin's fixtures::

    async def test_send(conveyor_settings, conveyor_worker):
        worker = make_worker(conveyor_settings)
        await conveyor_worker(worker)
        ...
        await wait_for(job_id, "complete", timeout=30)
        await drain(worker)
"""

from __future__ import annotations

from conveyor.testing.clock import FakeClock
from conveyor.testing.database import NoTestDatabaseError
from conveyor.testing.inprocess import TestWorker
from conveyor.testing.memlog import MemoryLog, Record
from conveyor.testing.stack import WaitTimeoutError, drain, isolated, running, wait_for

__all__ = [
    "FakeClock",
    "MemoryLog",
    "NoTestDatabaseError",
    "Record",
    "TestWorker",
    "WaitTimeoutError",
    "drain",
    "isolated",
    "running",
    "wait_for",
]
