"""What every fault scenario shares: worker subprocesses, effect accounting and figures.

A scenario submits jobs of ``fault.effect`` (``tests/faults/apps/effects_app.py``), runs
real ``conveyor worker`` subprocesses against a real broker and Postgres, injects its
faults, then checks that every job completed exactly once: one ``side_effects`` row per
job through ``ctx.db`` (committed with the completion). The app also appends each job id
to a file before that row: an effect outside ``ctx.db``, at-least-once by nature, so its
repeats are counted and reported rather than forbidden.

Each scenario prints one line ``FAULTS-FIGURES {json}`` (jobs, faults injected, lost,
duplicated effects, max recovery time, ...): RELIABILITY.md's table is filled from them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from conveyor import Settings, embedded
from tests.conftest import settings_env

APP = "tests.faults.apps.effects_app:worker"
FIGURES_PREFIX = "FAULTS-FIGURES "


@dataclasses.dataclass
class Figures:
    """One scenario's figures, printed as one machine-readable line.

    Args:
        scenario: A short name (the first column of RELIABILITY.md's table).
        jobs: Jobs submitted.
        faults: Faults injected (kills, rebalances, cuts, bad messages, ...).
        lost: Jobs that never completed (or completed without their ``ctx.db`` effect).
        duplicated: Jobs whose ``ctx.db`` effect was written more than once.
        external_duplicated: Jobs whose effect outside ``ctx.db`` ran more than once.
        max_recovery_s: Longest time from a fault's end to the next completion.
        extra: Scenario-specific figures (errors returned, removals, DLQ rows, ...).
    """

    scenario: str
    jobs: int
    faults: int = 0
    lost: int = 0
    duplicated: int = 0
    external_duplicated: int = 0
    max_recovery_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def recovered(self, seconds: float) -> None:
        """Keeps the longest recovery seen."""
        self.max_recovery_s = max(self.max_recovery_s, round(seconds, 1))

    def emit(self) -> None:
        """Prints the figures line (``pytest -s`` shows it)."""
        print(FIGURES_PREFIX + json.dumps(dataclasses.asdict(self), sort_keys=True), flush=True)


class WorkerProcess:
    """One ``conveyor worker`` subprocess running the effects app.

    Args:
        env: ``CONVEYOR_*`` variables (see ``settings_env``) plus ``FAULTS_EFFECTS_FILE``.
        log_path: Where its stdout and stderr go (printed when a scenario fails).
        metrics_port: Serve ``/healthz`` and ``/readyz`` there; 0 serves none.
        concurrency: Jobs running at once in it.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        metrics_port: int = 0,
        concurrency: int = 16,
    ) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor",
                    "worker",
                    APP,
                    "--log-level",
                    "WARNING",
                    "--metrics-port",
                    str(metrics_port),
                    "--concurrency",
                    str(concurrency),
                ],
                env={**base, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """The process still runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful leave), then SIGKILL after ``timeout``; the exit code."""
        if self.alive:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=30)

    def output(self, tail: int = 40) -> str:
        """The last lines the worker printed."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def ready(self) -> Callable[[], Awaitable[bool]]:
        """A check for :func:`wait_for`: ``/readyz`` answers 200 (fails if the worker died)."""

        async def check() -> bool:
            assert self.alive, self.output()
            try:
                status, _ = await self.probe("/readyz")
            except httpx.HTTPError:  # not listening yet
                return False
            return status == 200

        return check

    async def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """GETs ``/healthz`` or ``/readyz``: the status code and the JSON checks."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(url)
        return response.status_code, response.json()


def worker_env(settings: Settings, effects_file: Path) -> dict[str, str]:
    """The environment a worker subprocess needs for ``settings``."""
    return {**settings_env(settings), "FAULTS_EFFECTS_FILE": str(effects_file)}


class Effects:
    """The two effect ledgers of a scenario: the ``side_effects`` table and the file.

    Args:
        db: A connection to the test database.
        schema: The test's Postgres schema (quoted as needed here).
        effects_file: The file the app appends job ids to.
    """

    def __init__(self, db: asyncpg.Connection[Any], schema: str, effects_file: Path) -> None:
        self.db = db
        self.schema = f'"{schema}"'
        self.effects_file = effects_file

    async def create(self) -> None:
        """Creates the ``side_effects`` table the app writes through ``ctx.db``."""
        await self.db.execute(f"CREATE TABLE {self.schema}.side_effects (job_id text NOT NULL)")

    async def completed(self) -> int:
        """Jobs complete now."""
        query = f"SELECT count(*) FROM {self.schema}.jobs WHERE state = 'complete'"
        return int(await self.db.fetchval(query))

    async def completed_among(self, ids: list[str]) -> int:
        """Jobs of ``ids`` complete now."""
        query = (
            f"SELECT count(*) FROM {self.schema}.jobs "
            "WHERE state = 'complete' AND job_id::text = ANY($1::text[])"
        )
        return int(await self.db.fetchval(query, ids))

    def reached(self, target: int) -> Callable[[], Awaitable[bool]]:
        """A check for :func:`wait_for`: at least ``target`` jobs are complete."""

        async def check() -> bool:
            return await self.completed() >= target

        return check

    def all_of(self, ids: list[str]) -> Callable[[], Awaitable[bool]]:
        """A check for :func:`wait_for`: every job of ``ids`` is complete."""

        async def check() -> bool:
            return await self.completed_among(ids) >= len(ids)

        return check

    async def states(self) -> dict[str, int]:
        """Jobs per state."""
        rows = await self.db.fetch(
            f"SELECT state, count(*) AS n FROM {self.schema}.jobs GROUP BY state"
        )
        return {r["state"]: int(r["n"]) for r in rows}

    async def tally(self, ids: list[str], figures: Figures) -> None:
        """Fills ``lost``, ``duplicated`` and ``external_duplicated`` for the jobs ``ids``."""
        rows = await self.db.fetch(
            f"SELECT job_id, count(*) AS n FROM {self.schema}.side_effects GROUP BY job_id"
        )
        written = {r["job_id"]: int(r["n"]) for r in rows}
        complete = {
            str(r["job_id"])
            for r in await self.db.fetch(
                f"SELECT job_id FROM {self.schema}.jobs WHERE state = 'complete'"
            )
        }
        figures.lost = sum(1 for i in ids if i not in complete or written.get(i, 0) == 0)
        figures.duplicated = sum(1 for i in ids if written.get(i, 0) > 1)
        external = collections.Counter(self.effects_file.read_text().split())
        figures.external_duplicated = sum(1 for i in ids if external[i] > 1)
        figures.extra["external_missing"] = sum(1 for i in ids if external[i] == 0)
        figures.extra["external_calls"] = sum(external[i] for i in ids)


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    diagnose: Callable[[], str] = lambda: "",
) -> float:
    """Waits until ``check()`` holds; returns the seconds it took, fails with ``what``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnose()}")
        await asyncio.sleep(0.1)  # the poll interval of a deadline-bounded wait
    return time.monotonic() - start


async def progress_after(effects: Effects, *, timeout: float, what: str, **kw: Any) -> float:
    """Seconds until one more job completes than now: the recovery time after a fault."""
    start = await effects.completed()

    async def advanced() -> bool:
        return await effects.completed() > start

    return await wait_for(advanced, timeout=timeout, what=what, **kw)


class StallWatch:
    """Samples the completed count in the background and keeps the longest stall: the
    most seconds completions did not advance while jobs were outstanding (a scenario's
    recovery time when its faults have no single end, such as a rebalance storm).

    Args:
        database_url: Where to count completions (on a connection of its own).
        schema: The test's Postgres schema.
        total: Jobs outstanding until this many are complete.
    """

    def __init__(self, database_url: str, schema: str, total: int) -> None:
        self._url = database_url
        self._schema = schema
        self._total = total
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StallWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            effects = Effects(conn, self._schema, Path(os.devnull))
            last, since = -1, time.monotonic()
            while last < self._total:
                count = await effects.completed()
                now = time.monotonic()
                if count != last:
                    last, since = count, now
                self.longest = max(self.longest, now - since)
                await asyncio.sleep(0.2)  # the sampling period
        finally:
            await conn.close()


#: Group-coordinator lines of a member the broker dropped: its session expired, or it did
#: not rejoin within the rebalance timeout (a revoke slower than the timeout).
_REMOVAL = re.compile(r"has failed, removing it from the group|removed dynamic members who")


def member_removals(log_path: Path, group_prefix: str) -> list[str]:
    """The broker log's member removals in groups whose names start with ``group_prefix``."""
    text = log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if group_prefix in line and _REMOVAL.search(line)]


def free_port() -> int:
    """A free TCP port on loopback."""
    return embedded.free_port()
