"""The retry relay's tuning and counters."""

from __future__ import annotations

import dataclasses

from conveyor.errors import ConfigurationError

#: Seconds past ``delivery_timeout`` a revoke or stop waits for republishes in flight.
REVOKE_SLACK = 5.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelayOptions:
    """How the relay fetches, commits and republishes.

    Args:
        session_timeout_ms: Kafka consumer session timeout.
        heartbeat_interval_ms: Kafka consumer heartbeat interval.
        commit_interval: Seconds between offset commits (also committed on revoke and stop).
        fetch_timeout_ms: How long one fetch waits for records.
        max_held_per_partition: Records queued per partition before it is paused even when
            they are due; it resumes at half of this.
        delivery_timeout: Seconds a republish may take to be acknowledged before it is
            retried (and what revoke and stop wait at most for republishes in flight).
    """

    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    commit_interval: float = 1.0
    fetch_timeout_ms: int = 200
    max_held_per_partition: int = 1_000
    delivery_timeout: float = 30.0

    def __post_init__(self) -> None:
        positive = ("session_timeout_ms", "heartbeat_interval_ms", "commit_interval")
        for name in (*positive, "fetch_timeout_ms", "delivery_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(name, f"must be > 0, got {getattr(self, name)}")
        if self.max_held_per_partition < 2:
            raise ConfigurationError(
                "max_held_per_partition", f"must be >= 2, got {self.max_held_per_partition}"
            )


@dataclasses.dataclass
class RelayStats:
    """Counters of one relay (read them; they only grow).

    Args:
        republished: Records republished to a job topic and acknowledged.
        held_max: The most records waiting in pending queues at once.
        undecodable: Records skipped because they could not be decoded.
        hops: Records not yet due moved on to the retry ladder's tail after waiting their
            rung's delay, so they block no record behind them.
    """

    republished: int = 0
    held_max: int = 0
    undecodable: int = 0
    hops: int = 0
