"""A worker for the crash test: every job writes one side-effect row through ctx.db."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from conveyor import Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker

worker = Worker(
    Settings.from_env(),
    priorities=["normal"],
    concurrency=16,
    options=WorkerOptions(commit_interval=0.2, session_timeout_ms=6000, heartbeat_interval_ms=1000),
)


@worker.handler("crash.effect")
async def effect(ctx: JobContext, payload: dict[str, Any]) -> int:
    await ctx.db.execute("INSERT INTO side_effects (job_id) VALUES ($1)", ctx.job_id)
    await asyncio.sleep(random.uniform(0, 0.01))  # a little work between the write and the commit
    return int(payload["n"])
