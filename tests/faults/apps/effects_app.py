"""The worker every fault scenario runs: one side-effect row per job through ``ctx.db``.

``fault.effect`` first appends the job id to the file ``FAULTS_EFFECTS_FILE`` names (an
effect outside ``ctx.db``: at-least-once, so the harness counts its repeats), then inserts
one row through ``ctx.db`` (committed with the completion: exactly once), then works for
``payload["sleep"]`` seconds. ``fault.hostile`` fails permanently with the error text its
payload asks for (a NUL in it, or a megabyte of it), for the fuzz scenario.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from conveyor import JobContext, PermanentError, Settings, Worker
from tests.worker_helpers import TEST_OPTIONS

# The suite's quick group timings; probes on loopback only.
_OPTIONS = dataclasses.replace(TEST_OPTIONS, metrics_host="127.0.0.1", metrics_interval=1.0)
# A message whose schema id the registry does not know holds its partition for
# unknown_schema_wait (60 s by default) before it is dead-lettered; the wait is shortened
# to keep a scenario to seconds, and FAULTS_UNKNOWN_SCHEMA_WAIT shortens it further (the
# unknown-schema-id scenario sends 40 such messages; each is still looked up twice).
_OPTIONS = dataclasses.replace(
    _OPTIONS, unknown_schema_wait=float(os.environ.get("FAULTS_UNKNOWN_SCHEMA_WAIT", "2.0"))
)

worker = Worker(Settings.from_env(), priorities=["normal"], concurrency=16, options=_OPTIONS)

_EFFECTS_FILE = os.environ.get("FAULTS_EFFECTS_FILE")


def _external_effect(job_id: str) -> None:
    if _EFFECTS_FILE:
        # One short O_APPEND write per job: lines from concurrent workers never interleave.
        fd = os.open(_EFFECTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job_id}\n".encode())
        finally:
            os.close(fd)


@worker.handler("fault.effect")
async def effect(ctx: JobContext, payload: dict[str, Any]) -> int:
    _external_effect(ctx.job_id)
    await ctx.db.execute("INSERT INTO side_effects (job_id) VALUES ($1)", ctx.job_id)
    await asyncio.sleep(float(payload.get("sleep", 0.0)))
    return int(payload["n"])


@worker.handler("fault.hostile")
async def hostile(ctx: JobContext, payload: Any) -> None:
    mode = payload.get("mode") if isinstance(payload, dict) else None
    if mode == "nul":
        raise PermanentError("hostile\x00error\x00text with NULs")
    if mode == "huge":
        raise PermanentError("huge error " + "x" * 1_000_000)
    raise PermanentError(f"hostile payload of type {type(payload).__name__}")
