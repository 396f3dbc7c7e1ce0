"""Tuning of the worker runtime, with defaults that suit Apache Kafka in production."""

from __future__ import annotations

import dataclasses

from conveyor.errors import ConfigurationError

DEFAULT_CONCURRENCY = 32
DEFAULT_FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold an empty fetch of a job topic (see ARCHITECTURE.md).

On Apache Kafka a record ends the wait at once, so this only sets how often an idle
consumer asks again (10 times a second). Tansu holds an empty fetch for the whole wait,
so there it is added to an idle job's wait; 500 ms (Kafka's own default) made a worker
started by hand on the embedded broker start an idle job 1.0 to 1.2 s after submit.
"""

#: Time a revoke has beyond its wait for running jobs: the commit, and the rejoin itself.
REBALANCE_MARGIN_MS = 10_000


def rebalance_timeout(revoke_wait_s: float, session_timeout_ms: int, given: int | None) -> int:
    """The rebalance timeout for a member whose revoke may wait ``revoke_wait_s`` seconds.

    Raises:
        ConfigurationError: ``given`` is shorter than the revoke's wait.
    """
    needed = int(revoke_wait_s * 1000)
    if given is not None:
        if given <= needed:
            raise ConfigurationError(
                "rebalance_timeout_ms",
                f"must exceed the revoke's wait of {needed} ms (revoke_timeout), got {given}",
            )
        return given
    return max(needed + REBALANCE_MARGIN_MS, session_timeout_ms)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How the worker fetches, commits, leases and shuts down.

    Args:
        commit_interval: Seconds between offset commits (also committed on revoke and shutdown).
        max_buffered_per_partition: Jobs held per partition before it is paused; it resumes
            at half of this, so memory stays bounded whatever the backlog.
        fetch_timeout_ms: How long one fetch waits for records.
        fetch_max_wait_ms: How long the broker holds a fetch that found no records. Kafka
            answers as soon as a record arrives, so there this bounds idle fetches, not
            latency; Tansu holds the fetch for all of it, so there it adds to an idle
            job's wait. 100 ms suits both (``DEFAULT_FETCH_MAX_WAIT_MS``).
        lease_seconds: A job's lease; long jobs renew it every third of it.
        revoke_timeout: Seconds a revoke waits for running jobs of the revoked partitions.
        shutdown_grace: Seconds in-flight jobs get to finish on SIGTERM.
        session_timeout_ms: Kafka consumer session timeout.
        heartbeat_interval_ms: Kafka consumer heartbeat interval.
        rebalance_timeout_ms: How long the group waits for this member to rejoin during a
            rebalance, which includes its revoke (waiting up to ``revoke_timeout`` for
            running jobs, then committing). None derives it: ``revoke_timeout`` plus
            ``REBALANCE_MARGIN_MS`` for the commit, and never below the session timeout. A
            value that does not cover ``revoke_timeout`` is refused: the broker would drop
            the member mid-revoke and refuse its commit.
        max_poll_interval_ms: Kafka's limit between fetches; the fetch loop never waits on
            handlers, so long jobs do not approach it.
        run_relay: Also run the retry relay (``conveyor relay`` runs it on its own).
        run_dlq_sink: Also run the DLQ sink (``conveyor dlq-sink`` runs it on its own).
        run_scheduler: Also run the scheduler: delayed and run_at jobs, cron schedules
            (``conveyor scheduler`` runs it on its own).
        run_ledger: Also run the ledger, which records every submitted job as ``queued``
            in Postgres as soon as it is on its topic (``conveyor ledger`` runs it on its
            own; turn this off where that runs).
        ledger_process: Run that ledger in a child process of its own (started with this
            Python, stopped with the worker), off the worker's event loop and core: inside
            the loop, its decoding of every fetch delays the jobs waiting to start. False
            runs it on the worker's loop, in one process.
        purge_interval: Seconds between runs of the retention purge; None disables it.
        metrics_host: The address ``/metrics``, ``/healthz`` and ``/readyz`` are served on
            (the port is ``Settings.metrics_port``; 0 there serves nothing).
        metrics_interval: Seconds between refreshes of the lag and DLQ-size gauges.
        check_at_start: Before joining any group, check that the registry answers, the
            migrations are applied and the topics exist; each failure is one error.
        unknown_schema_wait: Seconds a job whose writer schema id the registry says it
            does not know (HTTP 404) holds its partition before it is dead-lettered: a
            registry follower that lags its leader answers 404 for a new id at first.
            A registry that does not answer at all is waited for without limit.
    """

    commit_interval: float = 1.0
    max_buffered_per_partition: int = 1000
    fetch_timeout_ms: int = 200
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS
    lease_seconds: float = 30.0
    revoke_timeout: float = 20.0
    shutdown_grace: float = 30.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int | None = None
    max_poll_interval_ms: int = 300_000
    run_relay: bool = True
    run_dlq_sink: bool = True
    run_scheduler: bool = True
    run_ledger: bool = True
    ledger_process: bool = True
    purge_interval: float | None = 3600.0
    metrics_host: str = "0.0.0.0"  # all interfaces: a pod's probes come from outside
    metrics_interval: float = 5.0
    check_at_start: bool = True
    unknown_schema_wait: float = 60.0

    @property
    def effective_rebalance_timeout_ms(self) -> int:
        """The rebalance timeout the consumers get (see ``rebalance_timeout_ms``)."""
        return rebalance_timeout(
            self.revoke_timeout, self.session_timeout_ms, self.rebalance_timeout_ms
        )

    def __post_init__(self) -> None:
        for name in (
            "commit_interval",
            "lease_seconds",
            "revoke_timeout",
            "shutdown_grace",
            "metrics_interval",
            "unknown_schema_wait",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(name, f"must be > 0, got {getattr(self, name)}")
        rebalance_timeout(self.revoke_timeout, self.session_timeout_ms, self.rebalance_timeout_ms)
        if self.max_buffered_per_partition < 2:
            raise ConfigurationError(
                "max_buffered_per_partition", f"must be >= 2, got {self.max_buffered_per_partition}"
            )
