"""``python -m bench``: run the benchmark scenarios, write a JSON result and BENCHMARKS.md.

Examples::

    python -m bench                          # a full run (the issue's sizes)
    python -m bench --quick --no-markdown    # the CI smoke run
    python -m bench --scenario latency --scenario keys --out /tmp/r.json

The broker, Postgres and registry come from ``CONVEYOR_*`` variables when set, and are
started otherwise (see ``bench.stack``: Apache Kafka when Java and Maven are here).
Celery runs on ``BENCH_REDIS_URL``, or on a ``redis-server`` the run starts, and is
reported as skipped when neither is to be had.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine, report, stack
from bench.context import Context
from bench.scenarios import SCENARIOS
from bench.sizes import FULL, QUICK

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "latest.json"
DEFAULT_MARKDOWN = REPO_ROOT / "BENCHMARKS.md"
#: The fetch wait on Tansu, which holds an empty fetch for all of it.
TANSU_FETCH_MAX_WAIT_MS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark conveyor side by side with a raw Kafka loop and Celery/Redis.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke sizes: every scenario in well under 2 min"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable; default: all, in order)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON result file")
    markdown = parser.add_mutually_exclusive_group()
    markdown.add_argument(
        "--markdown", type=Path, default=DEFAULT_MARKDOWN, help="where to write the tables"
    )
    markdown.add_argument("--no-markdown", action="store_true", help="write no Markdown")
    parser.add_argument("--note", help="a remark for BENCHMARKS.md (e.g. a busy machine)")
    return parser.parse_args(argv)


def log(message: str) -> None:
    """One progress line on stderr, with the time."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


async def run_scenarios(ctx: Context, names: list[str]) -> None:
    """Runs each named scenario in turn; a failure is recorded and the run goes on."""
    for name in names:
        log(f"== {name}")
        started = time.monotonic()
        try:
            result = await SCENARIOS[name](ctx)
        except Exception as exc:
            log(f"{name} failed: {exc!r}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.monotonic() - started, 1)
        ctx.results[name] = result
        log(f"{name} took {result['seconds']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 1 if a scenario failed."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    names = [n for n in SCENARIOS if args.scenario is None or n in args.scenario]
    started = time.monotonic()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = machine.machine()
    with stack.services() as services:
        log(f"services: {services.origins}")
        if services.broker == "tansu":
            # Tansu holds an empty fetch for the whole wait; Kafka answers on arrival.
            os.environ.setdefault("BENCH_FETCH_MAX_WAIT_MS", str(TANSU_FETCH_MAX_WAIT_MS))
        ctx = Context(stack=services, sizes=sizes, results={}, log=log)
        asyncio.run(run_scenarios(ctx, names))
        versions = machine.versions(services.settings.database_url)
    result: dict[str, Any] = {
        "meta": {
            "date": date,
            "quick": args.quick,
            "duration_s": round(time.monotonic() - started, 1),
            "machine": host,
            "versions": versions,
            "services": services.origins,
            "broker": services.broker,
            "fetch_max_wait_ms": os.environ.get("BENCH_FETCH_MAX_WAIT_MS") or "worker default",
            "sizes": dataclasses.asdict(sizes),
            "note": args.note,
        },
        "scenarios": ctx.results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    if not args.no_markdown:
        args.markdown.write_text(report.render(result))
        log(f"wrote {args.markdown}")
    return 1 if any("error" in r for r in ctx.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
