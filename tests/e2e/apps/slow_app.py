"""A worker for the shutdown test: each job takes about half a second."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import JobContext, Settings, Worker, WorkerOptions

worker = Worker(
    Settings.from_env(),
    priorities=["normal"],
    concurrency=4,
    options=WorkerOptions(commit_interval=0.2, session_timeout_ms=6000, heartbeat_interval_ms=1000),
)


@worker.handler("slow.effect")
async def effect(ctx: JobContext, payload: dict[str, Any]) -> None:
    await ctx.db.execute("INSERT INTO side_effects (job_id) VALUES ($1)", ctx.job_id)
    await asyncio.sleep(0.5)  # the job's work
