"""A worker with one handler that returns its payload, for the start-up and CLI tests."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from conveyor import JobContext, Settings, Worker

worker = Worker(Settings.from_env(), priorities=["normal"], concurrency=4)


@worker.handler("echo.back")
async def echo(ctx: JobContext, payload: Any) -> Any:
    return payload


@worker.handler("echo.hang")
async def hang(ctx: JobContext, payload: Any) -> None:
    await asyncio.Event().wait()  # runs until cancelled


@worker.handler("echo.gc")
async def collector(ctx: JobContext, payload: Any) -> Any:
    """The collector's settings in the process that runs the job."""
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count() > 0}
