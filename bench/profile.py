"""``python -m bench.profile``: where the worker's CPU goes per job, by stage, with py-spy.

It runs the throughput scenario's set-up (a preloaded backlog of no-op jobs on one
``normal`` topic, one ``conveyor worker`` with the same concurrency) on the services
``python -m bench`` uses, and once the first job is complete attaches py-spy to the
worker (``py-spy record --format raw --nonblocking``: sampled stacks, without pausing
the worker) until the backlog is done. ``bench.budget`` then sorts every sampled stack
into a stage (fetch, decode, mailbox and scheduler, status writes, handler call,
metrics and tracing, commit, and the rest), and the worker's CPU seconds over the same
time are shared out by samples, giving microseconds of CPU per job per stage.

Examples::

    python -m bench.profile                      # 50,000 jobs; writes bench/results/profile.json
    python -m bench.profile --jobs 20000 --out /tmp/p.json --raw /tmp/p.txt
    python -m bench.profile --markdown /tmp/budget.md   # also the BENCHMARKS.md section alone

``python -m bench`` renders ``bench/results/profile.json`` into BENCHMARKS.md, so after a
change to the hot path: run this, then the full bench. py-spy must be able to attach
(root, or ``kernel.yama.ptrace_scope`` 0); it comes with the bench extra.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import budget, contenders, jobs, machine, stack
from bench.procs import Child
from bench.scenarios.throughput import PRIORITY
from bench.sizes import FULL

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "profile.json"
#: Samples per second py-spy takes (its default is 100).
RATE = 250


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Profile conveyor's worker under the throughput scenario with py-spy.",
    )
    parser.add_argument("--jobs", type=int, default=50_000, help="backlog size (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=FULL.throughput_concurrency)
    parser.add_argument("--rate", type=int, default=RATE, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON result file")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    parser.add_argument("--markdown", type=Path, help="also write the budget section here")
    return parser.parse_args(argv)


def log(message: str) -> None:
    """One progress line on stderr, with the time."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def py_spy() -> str:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return found


class Recording:
    """py-spy recording a process into a collapsed-stacks file until :meth:`stop`."""

    def __init__(self, pid: int, path: Path, rate: int) -> None:
        argv = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--output", str(path)]
        argv += ["--rate", str(rate), "--nonblocking", "--full-filenames"]
        self.path = path
        self._process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )

    def stop(self) -> None:
        """Stops sampling (SIGINT makes py-spy write its file) and waits for the file."""
        self._process.send_signal(signal.SIGINT)
        _, err = self._process.communicate(timeout=60)
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-2000:]}")


async def profile(
    ctx_stack: stack.Stack, count: int, concurrency: int, rate: int, raw: Path
) -> dict[str, Any]:
    """Preloads ``count`` jobs and runs the worker over them under py-spy.

    Returns:
        The recording's window: ``jobs`` completed, ``seconds`` and the worker's ``cpu_s``.
    """
    async with stack.workspace(ctx_stack, "prof") as settings:
        log(f"preloading {count} jobs")
        await asyncio.to_thread(
            jobs.preload, settings, count, priority=PRIORITY, key=lambda i: f"k{i % 10_000}"
        )
        conn = await jobs.connect(settings)
        try:
            with contenders.conveyor_worker(
                settings, priorities=[PRIORITY], concurrency=concurrency
            ) as child:
                window = await _record(child, conn, count, rate, raw)
        finally:
            await conn.close()
    return window


async def _record(child: Child, conn: Any, count: int, rate: int, raw: Path) -> dict[str, Any]:
    """Samples the worker from its first complete job to its last; returns that window."""
    while (before := await jobs.count_complete(conn)) == 0:
        child.check_alive()
        await asyncio.sleep(0.05)
    cpu_before, started = child.usage().cpu_s, time.monotonic()
    recording = Recording(child.pid, raw, rate)
    log(f"py-spy attached at {before} jobs complete")
    try:
        while (done := await jobs.count_complete(conn)) < count:
            child.check_alive()
            await asyncio.sleep(0.25)
    finally:
        cpu_s = child.usage().cpu_s - cpu_before
        seconds = time.monotonic() - started
        recording.stop()
    log(f"recorded {done - before} jobs in {seconds:.1f}s, {cpu_s:.2f} CPU s")
    return {"jobs": done - before, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 3)}


def _broker_name(services: stack.Stack) -> str:
    return "Tansu" if services.broker == "tansu" else "Apache Kafka"


def main(argv: list[str] | None = None) -> int:
    """Runs the profile and writes its JSON (and, if asked, the Markdown section)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        raw = args.raw or Path(tmp) / "stacks.txt"
        with stack.services() as services:
            if services.broker == "tansu":
                os.environ.setdefault("BENCH_FETCH_MAX_WAIT_MS", "20")
            log(f"services: {services.origins}")
            host = machine.machine()
            window = asyncio.run(profile(services, args.jobs, args.concurrency, args.rate, raw))
        stages = budget.classify(raw.read_text())
    result = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "broker": _broker_name(services),
            "machine": host,
            "backlog": args.jobs,
            "concurrency": args.concurrency,
            "rate": args.rate,
            **window,
        },
        **budget.budget(stages, cpu_s=window["cpu_s"], jobs=window["jobs"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    if args.markdown:
        args.markdown.write_text(budget.render(result))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
