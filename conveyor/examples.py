"""The example handlers ``conveyor dev`` runs: one succeeds, one reports progress, one
fails, one is a long job. They double as a short tour of writing handlers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.consumer.context import JobContext
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.settings import Settings

EXAMPLE_TYPES = ("example.succeed", "example.progress", "example.fail", "example.long")
LONG_JOB_SECONDS = 2.0


def build_worker(settings: Settings, *, options: WorkerOptions | None = None) -> Worker:
    """A worker for every priority with the four example handlers registered."""
    worker = Worker(settings, concurrency=16, options=options)

    @worker.handler("example.succeed")
    async def succeed(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return {"echo": payload}

    @worker.handler("example.progress")
    async def progress(ctx: JobContext, payload: dict[str, Any]) -> str:
        for pct in (25, 50, 75, 100):
            await asyncio.sleep(0.05)  # a step of the work
            await ctx.report_progress(pct, f"step {pct // 25} of 4")
        return "done"

    @worker.handler("example.fail", max_attempts=1)
    async def fail(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError(f"example failure for job {ctx.job_id}")

    @worker.handler("example.long", duration="long")
    async def long_job(ctx: JobContext, payload: dict[str, Any]) -> str:
        await asyncio.sleep(LONG_JOB_SECONDS)  # a long job renews its lease meanwhile
        return "finished"

    return worker
