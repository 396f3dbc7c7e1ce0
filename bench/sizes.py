"""How big each scenario is: the issue's defaults for a full run, and a smoke size.

``QUICK`` shrinks every scenario so that a whole run takes well under two minutes; its
figures only show that the harness works (startup dominates them), never speed.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sizes:
    """Scenario parameters.

    Args:
        throughput_jobs: Jobs preloaded for the throughput scenario.
        throughput_keys: Distinct keys among them.
        throughput_concurrency: The conveyor worker's concurrency there (its default).
        throughput_processes: conveyor runs there a second time with ``--processes`` this
            many (1: not at all).
        latency_rates: Fixed submit rates (jobs/s); 50% of conveyor's measured maximum
            is added when the throughput scenario ran first.
        latency_seconds: How long each rate is offered.
        lone_jobs: Jobs submitted one at a time to an idle worker, each after the one
            before finished and ``lone_gap_s`` passed.
        lone_gap_s: The idle time before each of those jobs.
        priority_backlog: Jobs preloaded in each of the four priorities.
        priority_handler_ms: What the priority scenario's handler awaits.
        priority_concurrency: The worker's (limited) concurrency there.
        key_counts: The distinct-key counts of the key-concurrency series.
        key_jobs: Most jobs in one step of that series.
        key_step_seconds: A step with few keys gets the jobs a perfectly parallel run
            would finish in this many seconds (see ``key_step_jobs``).
        key_handler_ms: What the key scenario's handler awaits.
        key_concurrency: The worker's concurrency there.
        memory_backlog: Jobs preloaded for the memory scenario.
        memory_seconds: How long the worker runs against that backlog.
        scaling_processes: The worker-process counts of the scaling series.
        scaling_jobs: Jobs preloaded for each step of that series.
        scheduled_jobs: Jobs with a ``run_at`` in the scheduling scenario.
        scheduled_window_s: The window their due times are spread over (the issue's hour,
            compressed).
        scheduled_lead_s: From the first submit to the first due time.
        visibility_rate: Jobs per second submitted while the ledger records them.
        visibility_seconds: How long that rate is offered (per step).
        visibility_backlog: Jobs preloaded for the ledger's catch-up.
        job_timeout: Longest wait for one step's jobs to finish.
        poll_interval: Seconds between two readings of progress and process usage (each
            reading of conveyor's progress is a count over the jobs table).
    """

    throughput_jobs: int
    throughput_keys: int = 10_000
    throughput_concurrency: int = 32
    throughput_processes: int = 2
    latency_rates: tuple[float, ...] = (1000.0,)
    latency_seconds: float
    lone_jobs: int = 50
    lone_gap_s: float = 0.3
    priority_backlog: int
    priority_handler_ms: float = 2.0
    priority_concurrency: int = 8
    key_counts: tuple[int, ...] = (1, 10, 100, 1000)
    key_jobs: int
    key_step_seconds: float = 3.0
    key_handler_ms: float = 10.0
    key_concurrency: int = 64
    memory_backlog: int
    memory_seconds: float
    scaling_processes: tuple[int, ...] = (1, 2, 4)
    scaling_jobs: int
    scheduled_jobs: int = 100_000
    scheduled_window_s: float = 180.0
    scheduled_lead_s: float = 60.0
    visibility_rate: float = 5000.0
    visibility_seconds: float = 20.0
    visibility_backlog: int = 100_000
    job_timeout: float = 900.0
    poll_interval: float = 1.0

    def key_step_jobs(self, keys: int) -> int:
        """Jobs for the step with ``keys`` distinct keys."""
        per_key = int(self.key_step_seconds * 1000 / self.key_handler_ms)
        return min(self.key_jobs, max(keys * per_key, 20))


FULL = Sizes(
    throughput_jobs=100_000,
    latency_seconds=20.0,
    priority_backlog=5_000,
    key_jobs=5_000,
    memory_backlog=1_000_000,
    memory_seconds=60.0,
    scaling_jobs=50_000,
)

QUICK = Sizes(
    throughput_jobs=1_000,
    throughput_keys=500,
    latency_rates=(200.0,),
    latency_seconds=0.5,
    lone_jobs=5,
    lone_gap_s=0.1,
    priority_backlog=300,
    key_jobs=600,
    key_step_seconds=0.5,
    memory_backlog=10_000,
    memory_seconds=4.0,
    scaling_jobs=600,
    scheduled_jobs=300,
    scheduled_window_s=2.0,
    scheduled_lead_s=2.0,
    visibility_rate=300.0,
    visibility_seconds=1.0,
    visibility_backlog=3_000,
    job_timeout=60.0,
    poll_interval=0.25,
)
