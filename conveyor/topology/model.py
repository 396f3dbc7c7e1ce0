"""The declared topology: every topic and consumer group name conveyor uses.

Pure data, no I/O. ``Topology.from_settings(settings)`` is the one place topic names,
partition counts and topic configs are decided; the producer, the worker, the retry
relay and ``conveyor topology plan|apply`` all ask it rather than building names.

Partition counts follow the partition unit ``u`` (``CONVEYOR_PARTITION_UNIT``)::

    <prefix>.jobs.critical   4u      <prefix>.jobs.retry.<delay>   2u each
    <prefix>.jobs.high       3u      <prefix>.jobs.dlq             u
    <prefix>.jobs.normal     2u      <prefix>.jobs.events          4u
    <prefix>.jobs.low        u       <prefix>.jobs.control         1
                                     <prefix>.jobs.scheduled       2u

The job topics' 4:3:2:1 ratio bounds how far each priority's worker deployment can
scale (one consumer per partition), so higher priorities get more parallelism.

How the cluster is compared with this declaration lives in ``drift``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from conveyor.errors import ConfigurationError
from conveyor.settings import Settings, format_duration

PRIORITIES = ("critical", "high", "normal", "low")
PRIORITY_WEIGHTS = {"critical": 4, "high": 3, "normal": 2, "low": 1}
ROLES = ("jobs", "retry", "dlq", "events", "control", "scheduled")

RETRY_PARTITION_FACTOR = 2
DLQ_PARTITION_FACTOR = 1
EVENTS_PARTITION_FACTOR = 4
CONTROL_PARTITIONS = 1
SCHEDULED_PARTITION_FACTOR = 2
DLQ_RETENTION_DAYS = 30
CONTROL_RETENTION_DAYS = 1
MIN_INSYNC_REPLICAS = 2
# Below three replicas, min.insync.replicas=2 would make a single broker outage stop
# every producer using acks=all, so the broker default is kept.
MIN_INSYNC_FROM_REPLICATION = 3
# KIP-464: CreateTopics with -1 replicas takes the broker's default.replication.factor.
BROKER_DEFAULT_REPLICATION = -1

_DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """One declared topic.

    Args:
        name: The full topic name, prefix included.
        partitions: The declared partition count.
        configs: Topic configs conveyor sets at creation and checks afterwards.
        role: One of ``ROLES``: jobs, retry, dlq, events, control or scheduled.
        priority: The priority of a job topic; ``None`` for the other roles.
    """

    name: str
    partitions: int
    configs: Mapping[str, str] = dataclasses.field(hash=False)
    role: str
    priority: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        object.__setattr__(self, "configs", types.MappingProxyType(dict(self.configs)))

    @property
    def unit_factor(self) -> int | None:
        """Partitions per partition unit, or ``None`` for the fixed-size control topic."""
        if self.role == "jobs" and self.priority is not None:
            return PRIORITY_WEIGHTS[self.priority]
        factors = {
            "retry": RETRY_PARTITION_FACTOR,
            "dlq": DLQ_PARTITION_FACTOR,
            "events": EVENTS_PARTITION_FACTOR,
            "scheduled": SCHEDULED_PARTITION_FACTOR,
        }
        return factors.get(self.role)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryTopic:
    """One rung of the retry ladder.

    Args:
        name: The topic name, ``<prefix>.jobs.retry.<label>``.
        delay_s: How long a message waits in this topic before the relay republishes it.
    """

    name: str
    delay_s: float

    @property
    def label(self) -> str:
        """The delay as it appears in the topic name (``5s``, ``30s``, ``5m``)."""
        return format_duration(self.delay_s)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Topology:
    """Every topic and consumer group of one conveyor deployment (one topic prefix).

    Build it with :meth:`from_settings`; the constructor takes the decided values.

    Args:
        prefix: The topic prefix (``CONVEYOR_TOPIC_PREFIX``).
        partition_unit: Partitions of the ``low`` topic; the unit of every other count.
        replication_factor: Replicas per topic; ``None`` takes the broker's default.
        topics: Every declared topic: job topics in ``PRIORITIES`` order, the retry
            ladder by increasing delay, then dlq, events, control and scheduled.
        retry_topics: The retry ladder ordered by delay.
    """

    prefix: str
    partition_unit: int
    replication_factor: int | None
    topics: tuple[TopicSpec, ...]
    retry_topics: tuple[RetryTopic, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        """Declares the topology for ``settings``.

        Raises:
            ConfigurationError: Two retry delays share a label, or a retry delay is not
                shorter than the job retention (the retry would expire before it is due).
        """
        prefix, unit = settings.topic_prefix, settings.partition_unit
        job_ms = settings.job_retention_days * _DAY_MS
        base = {"cleanup.policy": "delete"}
        if (settings.replication_factor or 0) >= MIN_INSYNC_FROM_REPLICATION:
            base["min.insync.replicas"] = str(MIN_INSYNC_REPLICAS)
        job_configs = {**base, "retention.ms": str(job_ms)}

        jobs = [
            TopicSpec(
                name=f"{prefix}.jobs.{priority}",
                partitions=unit * PRIORITY_WEIGHTS[priority],
                configs=job_configs,
                role="jobs",
                priority=priority,
            )
            for priority in PRIORITIES
        ]
        ladder = _retry_ladder(prefix, settings.retry_delays, job_ms)
        retries = [
            TopicSpec(
                name=rung.name,
                partitions=unit * RETRY_PARTITION_FACTOR,
                configs=job_configs,
                role="retry",
            )
            for rung in ladder
        ]
        tail = [
            TopicSpec(
                name=f"{prefix}.jobs.dlq",
                partitions=unit * DLQ_PARTITION_FACTOR,
                configs={**base, "retention.ms": str(DLQ_RETENTION_DAYS * _DAY_MS)},
                role="dlq",
            ),
            TopicSpec(
                name=f"{prefix}.jobs.events",
                partitions=unit * EVENTS_PARTITION_FACTOR,
                configs=job_configs,
                role="events",
            ),
            TopicSpec(
                name=f"{prefix}.jobs.control",
                partitions=CONTROL_PARTITIONS,
                configs={**base, "retention.ms": str(CONTROL_RETENTION_DAYS * _DAY_MS)},
                role="control",
            ),
            # Delayed and run_at jobs wait here only until the scheduler stores them in
            # Postgres (conveyor.scheduling); the table holds them for any horizon.
            TopicSpec(
                name=f"{prefix}.jobs.scheduled",
                partitions=unit * SCHEDULED_PARTITION_FACTOR,
                configs=job_configs,
                role="scheduled",
            ),
        ]
        return cls(
            prefix=prefix,
            partition_unit=unit,
            replication_factor=settings.replication_factor,
            topics=(*jobs, *retries, *tail),
            retry_topics=ladder,
        )

    def job_topic(self, priority: str) -> str:
        """The topic jobs of ``priority`` are submitted to.

        Raises:
            ConfigurationError: ``priority`` is not one of ``PRIORITIES``.
        """
        return f"{self.prefix}.jobs.{_check_priority(priority)}"

    def consumer_group(self, priority: str) -> str:
        """The consumer group of the workers serving ``priority``.

        Raises:
            ConfigurationError: ``priority`` is not one of ``PRIORITIES``.
        """
        return f"{self.prefix}.workers.{_check_priority(priority)}"

    def retry_topic_for(self, delay_s: float) -> str:
        """The retry topic for a wait of ``delay_s`` seconds.

        The rung with the largest delay not above ``delay_s``, so a message is never
        held back longer than asked by the topic itself; shorter waits than every rung
        take the first rung. A wait longer than the top rung's delay also takes the top
        rung: the relay holds a record at most its rung's delay and then moves it to the
        tail (a hop), so a far-future one never blocks the records behind it.
        """
        chosen = self.retry_topics[0]
        for rung in self.retry_topics:
            if rung.delay_s <= delay_s:
                chosen = rung
        return chosen.name

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic."""
        return f"{self.prefix}.jobs.dlq"

    @property
    def events_topic(self) -> str:
        """The topic of job lifecycle events (``JobStarted``, ``JobFailed``, ...)."""
        return f"{self.prefix}.jobs.events"

    @property
    def control_topic(self) -> str:
        """The single-partition topic of control commands every worker reads."""
        return f"{self.prefix}.jobs.control"

    @property
    def scheduled_topic(self) -> str:
        """The topic of delayed and ``run_at`` jobs, which the scheduler stores until due."""
        return f"{self.prefix}.jobs.scheduled"

    @property
    def scheduler_group(self) -> str:
        """The consumer group of the schedulers reading :attr:`scheduled_topic`."""
        return f"{self.prefix}.scheduler"

    @property
    def job_topics(self) -> tuple[TopicSpec, ...]:
        """The four job topics, in ``PRIORITIES`` order."""
        return tuple(spec for spec in self.topics if spec.role == "jobs")

    def spec(self, name: str) -> TopicSpec:
        """The declaration of the topic called ``name``.

        Raises:
            KeyError: No declared topic has that name.
        """
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def priority_of(self, topic: str) -> str | None:
        """The priority whose job topic is ``topic``, or ``None`` for any other topic."""
        for spec in self.job_topics:
            if spec.name == topic:
                return spec.priority
        return None


def _check_priority(priority: str) -> str:
    if priority not in PRIORITY_WEIGHTS:
        raise ConfigurationError(
            "priority", f"expected one of {', '.join(PRIORITIES)}, got {priority!r}"
        )
    return priority


def _retry_ladder(
    prefix: str, delays: tuple[float, ...], retention_ms: int
) -> tuple[RetryTopic, ...]:
    ladder = tuple(
        RetryTopic(name=f"{prefix}.jobs.retry.{format_duration(d)}", delay_s=d)
        for d in sorted(delays)
    )
    names = [rung.name for rung in ladder]
    if len(set(names)) != len(names):
        raise ConfigurationError(
            "retry_delays", f"delays {delays} give duplicate topic names {names}"
        )
    longest = ladder[-1]
    if longest.delay_s * 1000 >= retention_ms:
        raise ConfigurationError(
            "retry_delays",
            f"delay {longest.label} is not shorter than the job retention "
            f"({retention_ms // _DAY_MS} days); retries would expire before they are due",
        )
    return ladder
