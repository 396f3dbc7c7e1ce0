"""What every scenario gets: the services, the sizes, and the results so far."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bench.sizes import Sizes
from bench.stack import Stack
from bench.watch import Watched


@dataclasses.dataclass
class Context:
    """The run a scenario belongs to.

    Args:
        stack: The running broker, Postgres and registry.
        sizes: The scenario parameters (full or quick).
        results: Results of the scenarios that already ran, by name; a later scenario may
            build on them (latency offers 50% of the measured maximum).
        log: Prints one progress line.
    """

    stack: Stack
    sizes: Sizes
    results: dict[str, Any]
    log: Callable[[str], None] = print


def throughput_figures(jobs: int, jobs_per_s: float, watched: Watched) -> dict[str, float]:
    """The figures of one contender in a throughput run.

    Args:
        jobs: Jobs done.
        jobs_per_s: Jobs per second from the first job started to the last finished.
        watched: CPU and memory of the contender's process tree.
    """
    return {
        "jobs": jobs,
        "jobs_per_s": round(jobs_per_s, 1),
        "cpu_s_per_1000": watched.cpu_per_1000(jobs),
        "peak_rss_mb": watched.peak_rss_mb,
        "wall_s": round(watched.wall_s, 2),
        "machine_busy_pct": watched.machine_busy_pct,
    }
