"""Compare the declared topology with a description of a cluster; pure, no I/O.

:func:`diff` turns a ``Topology`` and the cluster's topics (``ObservedTopic``) into a
``Plan``: the topics to create, those in sync, and every ``Drift`` with an explanation
of why conveyor leaves it alone and what an operator can do. The drift rules live here:
partition counts (which conveyor never changes), the 4:3:2:1 ratio of the job topics,
the replication factor and topic configs, where a retention longer than declared is
fine. ``admin`` describes the cluster and calls :func:`diff`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from conveyor.topology.model import PRIORITIES, PRIORITY_WEIGHTS, TopicSpec, Topology

__all__ = ["Drift", "ObservedTopic", "Plan", "diff"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservedTopic:
    """What the cluster reports about one topic.

    Args:
        name: The topic name.
        partitions: Its partition count.
        configs: Its configs as the broker reports them; a key the broker does not
            report is unknown, not different.
        replication_factor: Replicas per partition, when known.
    """

    name: str
    partitions: int
    configs: Mapping[str, str] = dataclasses.field(hash=False)
    replication_factor: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Drift:
    """One way an existing topic differs from its declaration.

    Args:
        topic: The topic, or ``<prefix>.jobs.*`` for the ratio across job topics.
        field: What differs: ``partitions``, ``partition ratio``,
            ``replication factor`` or a config key.
        declared: The declared value.
        actual: The value on the cluster.
        explanation: Why conveyor leaves it alone and what an operator can do.
    """

    topic: str
    field: str
    declared: str
    actual: str
    explanation: str

    def __str__(self) -> str:
        return (
            f"{self.topic}: {self.field} is {self.actual} on the cluster, "
            f"declared {self.declared}. {self.explanation}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """The difference between the declared topology and the cluster.

    Args:
        to_create: Declared topics the cluster lacks.
        in_sync: Declared topics that exist as declared.
        drifts: Every difference apply will not fix, at most one per topic and field.
        notes: Differences that are fine (retention longer than declared) and configs
            the broker did not report.
    """

    to_create: tuple[TopicSpec, ...]
    in_sync: tuple[TopicSpec, ...]
    drifts: tuple[Drift, ...]
    notes: tuple[str, ...] = ()

    @property
    def has_drift(self) -> bool:
        """True when some existing topic differs from its declaration."""
        return bool(self.drifts)

    def summary(self) -> str:
        """One line: how many topics to create, in sync, and how many drifts."""
        return (
            f"{len(self.to_create)} to create, {len(self.in_sync)} in sync, "
            f"{len(self.drifts)} drift(s)"
        )


_NEVER_REPARTITION = (
    "conveyor never changes partition counts: adding partitions re-maps keys to partitions, "
    "breaking per-key ordering for keys with jobs in flight, and Kafka cannot shrink a topic."
)
_MIGRATE = "migrate to new topics (a new CONVEYOR_TOPIC_PREFIX) and drain these"


def diff(topology: Topology, cluster: Mapping[str, ObservedTopic]) -> Plan:
    """Compares the declaration with a description of the cluster; no I/O.

    Args:
        topology: The declared topology.
        cluster: The cluster's topics by name; undeclared topics are ignored.

    Returns:
        The topics to create, those in sync, every drift, and notes on what was fine or
        could not be checked.
    """
    to_create: list[TopicSpec] = []
    in_sync: list[TopicSpec] = []
    drifts: list[Drift] = []
    notes: list[str] = []
    for spec in topology.topics:
        observed = cluster.get(spec.name)
        if observed is None:
            to_create.append(spec)
            continue
        found = [
            *_partition_drift(spec, observed),
            *_replication_drift(spec, topology.replication_factor, observed),
            *_config_drifts(spec, observed, notes),
        ]
        drifts.extend(found)
        if not found:
            in_sync.append(spec)
    ratio = _ratio_drift(topology, cluster)
    if ratio is not None:
        drifts.append(ratio)
    return Plan(
        to_create=tuple(to_create), in_sync=tuple(in_sync), drifts=tuple(drifts), notes=tuple(notes)
    )


def _partition_drift(spec: TopicSpec, observed: ObservedTopic) -> list[Drift]:
    actual = observed.partitions
    if actual == spec.partitions:
        return []
    factor = spec.unit_factor
    if factor is None:
        fix = (
            "The control topic needs exactly 1 partition so every worker reads one ordered "
            f"stream: {_MIGRATE}, or re-create it while no worker runs."
        )
    elif actual % factor == 0:
        fix = (
            f"Set CONVEYOR_PARTITION_UNIT={actual // factor} to declare what the cluster "
            f"has, or {_MIGRATE}."
        )
    else:
        fix = (
            f"No CONVEYOR_PARTITION_UNIT declares {actual} partitions for this topic "
            f"(it needs a multiple of {factor}), so {_MIGRATE}."
        )
    return [
        Drift(
            topic=spec.name,
            field="partitions",
            declared=str(spec.partitions),
            actual=str(actual),
            explanation=f"{_NEVER_REPARTITION} {fix}",
        )
    ]


def _replication_drift(
    spec: TopicSpec, declared: int | None, observed: ObservedTopic
) -> list[Drift]:
    actual = observed.replication_factor
    if declared is None or actual is None or actual == declared:
        return []
    return [
        Drift(
            topic=spec.name,
            field="replication factor",
            declared=str(declared),
            actual=str(actual),
            explanation=(
                "conveyor never reassigns replicas: change them with "
                "kafka-reassign-partitions, or set CONVEYOR_REPLICATION_FACTOR to match."
            ),
        )
    ]


def _config_drifts(spec: TopicSpec, observed: ObservedTopic, notes: list[str]) -> list[Drift]:
    drifts: list[Drift] = []
    for key, declared in spec.configs.items():
        actual = observed.configs.get(key)
        if actual is None:
            notes.append(f"{spec.name}: the broker does not report {key}, so it was not checked")
        elif actual == declared:
            continue
        elif key == "retention.ms" and _retention_covers(actual, declared):
            notes.append(
                f"{spec.name}: retention.ms is {actual}, longer than the declared {declared}; "
                "kept, since the declared retention is a minimum"
            )
        else:
            risk = (
                "Messages may be deleted before they are processed. "
                if key == "retention.ms"
                else ""
            )
            drifts.append(
                Drift(
                    topic=spec.name,
                    field=key,
                    declared=declared,
                    actual=actual,
                    explanation=(
                        f"{risk}conveyor never alters an existing topic's configs; set it with "
                        f"kafka-configs --alter --entity-type topics --entity-name {spec.name} "
                        f"--add-config {key}={declared}, or change the settings to match."
                    ),
                )
            )
    return drifts


def _retention_covers(actual: str, declared: str) -> bool:
    try:
        value = int(actual)
        return value == -1 or value >= int(declared)  # -1 keeps messages forever
    except ValueError:
        return False


def _ratio_drift(topology: Topology, cluster: Mapping[str, ObservedTopic]) -> Drift | None:
    counts = {
        spec.priority: cluster[spec.name].partitions
        for spec in topology.job_topics
        if spec.priority is not None and spec.name in cluster
    }
    units = {count / PRIORITY_WEIGHTS[priority] for priority, count in counts.items()}
    if len(units) <= 1 and all(unit.is_integer() and unit >= 1 for unit in units):
        return None
    declared = " ".join(f"{p}={topology.partition_unit * PRIORITY_WEIGHTS[p]}" for p in PRIORITIES)
    return Drift(
        topic=f"{topology.prefix}.jobs.*",
        field="partition ratio",
        declared=f"4:3:2:1 ({declared})",
        actual=" ".join(f"{p}={counts[p]}" for p in PRIORITIES if p in counts),
        explanation=(
            "Each priority's workers scale to at most one consumer per partition, and the "
            "4:3:2:1 ratio is what gives higher priorities more parallelism; no partition "
            f"unit yields the counts on the cluster. {_NEVER_REPARTITION} So {_MIGRATE}."
        ),
    )
