"""The declared topology (names, partitions, configs) and its pure diff against a cluster."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigurationError
from conveyor.settings import Settings
from conveyor.topology import PRIORITIES, PRIORITY_WEIGHTS, ObservedTopic, Topology, diff

DAY_MS = 86_400_000


def declared(**settings: object) -> Topology:
    return Topology.from_settings(Settings(topic_prefix="acme", **settings))  # type: ignore[arg-type]


def as_cluster(topology: Topology, **partitions: int) -> dict[str, ObservedTopic]:
    """The cluster exactly as declared, except partition overrides keyed by topic suffix."""
    cluster = {}
    for spec in topology.topics:
        suffix = spec.name.removeprefix(f"{topology.prefix}.").replace(".", "_")
        cluster[spec.name] = ObservedTopic(
            name=spec.name,
            partitions=partitions.get(suffix, spec.partitions),
            configs=dict(spec.configs),
            replication_factor=1,
        )
    return cluster


def test_topic_names_follow_the_prefix_and_default_retry_ladder() -> None:
    topology = declared()
    assert [spec.name for spec in topology.topics] == [
        "acme.jobs.critical",
        "acme.jobs.high",
        "acme.jobs.normal",
        "acme.jobs.low",
        "acme.jobs.retry.5s",
        "acme.jobs.retry.30s",
        "acme.jobs.retry.5m",
        "acme.jobs.dlq",
        "acme.jobs.events",
        "acme.jobs.control",
        "acme.jobs.scheduled",
    ]
    assert [spec.role for spec in topology.topics] == [
        *["jobs"] * 4,
        *["retry"] * 3,
        "dlq",
        "events",
        "control",
        "scheduled",
    ]
    assert (topology.scheduled_topic, topology.scheduler_group) == (
        "acme.jobs.scheduled",
        "acme.scheduler",
    )
    assert [topology.job_topic(p) for p in PRIORITIES] == [
        f"acme.jobs.{p}" for p in ("critical", "high", "normal", "low")
    ]
    assert (topology.dlq_topic, topology.events_topic, topology.control_topic) == (
        "acme.jobs.dlq",
        "acme.jobs.events",
        "acme.jobs.control",
    )
    assert [(r.name, r.delay_s, r.label) for r in topology.retry_topics] == [
        ("acme.jobs.retry.5s", 5.0, "5s"),
        ("acme.jobs.retry.30s", 30.0, "30s"),
        ("acme.jobs.retry.5m", 300.0, "5m"),
    ]


def test_consumer_groups_are_one_per_priority() -> None:
    topology = declared()
    assert [topology.consumer_group(p) for p in PRIORITIES] == [
        "acme.workers.critical",
        "acme.workers.high",
        "acme.workers.normal",
        "acme.workers.low",
    ]


def test_unknown_priority_is_a_configuration_error_listing_the_priorities() -> None:
    with pytest.raises(ConfigurationError, match="critical, high, normal, low"):
        declared().job_topic("urgent")
    with pytest.raises(ConfigurationError, match="urgent"):
        declared().consumer_group("urgent")


def test_priority_of_maps_job_topics_back_and_other_topics_to_none() -> None:
    topology = declared()
    assert topology.priority_of("acme.jobs.high") == "high"
    assert topology.priority_of("acme.jobs.dlq") is None


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (1, [4, 3, 2, 1, 2, 2, 2, 1, 4, 1, 2]),
        (2, [8, 6, 4, 2, 4, 4, 4, 2, 8, 1, 4]),
        (3, [12, 9, 6, 3, 6, 6, 6, 3, 12, 1, 6]),
    ],
)
def test_partition_counts_scale_with_the_unit_and_control_stays_at_one(
    unit: int, expected: list[int]
) -> None:
    assert [spec.partitions for spec in declared(partition_unit=unit).topics] == expected


def test_retention_is_job_retention_for_jobs_retry_events_30d_dlq_1d_control() -> None:
    topology = declared(job_retention_days=14)
    retention = {spec.name: spec.configs["retention.ms"] for spec in topology.topics}
    assert retention == {
        **{spec.name: str(14 * DAY_MS) for spec in topology.topics},
        "acme.jobs.dlq": str(30 * DAY_MS),
        "acme.jobs.control": str(1 * DAY_MS),
    }
    assert {spec.configs["cleanup.policy"] for spec in topology.topics} == {"delete"}


def test_job_topics_keep_at_least_seven_days_by_default() -> None:
    assert {spec.configs["retention.ms"] for spec in declared().job_topics} == {str(7 * DAY_MS)}


@pytest.mark.parametrize(
    ("replication_factor", "min_insync"),
    [(None, None), (1, None), (2, None), (3, "2"), (5, "2")],
)
def test_min_insync_replicas_is_two_only_from_three_replicas(
    replication_factor: int | None, min_insync: str | None
) -> None:
    topology = declared(replication_factor=replication_factor)
    assert {spec.configs.get("min.insync.replicas") for spec in topology.topics} == {min_insync}
    assert topology.replication_factor == replication_factor


def test_custom_retry_delays_name_topics_by_their_shortest_label() -> None:
    topology = declared(retry_delays=(1.0, 90.0, 7200.0))
    assert [r.name for r in topology.retry_topics] == [
        "acme.jobs.retry.1s",
        "acme.jobs.retry.90s",
        "acme.jobs.retry.2h",
    ]


def test_retry_delay_not_shorter_than_retention_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="retry_delays"):
        declared(retry_delays=(5.0, 8 * 86400.0))


@pytest.mark.parametrize(
    ("delay_s", "expected"),
    [
        (0.0, "acme.jobs.retry.5s"),
        (3.0, "acme.jobs.retry.5s"),
        (5.0, "acme.jobs.retry.5s"),
        (29.9, "acme.jobs.retry.5s"),
        (30.0, "acme.jobs.retry.30s"),
        (299.0, "acme.jobs.retry.30s"),
        (300.0, "acme.jobs.retry.5m"),
        (86400.0, "acme.jobs.retry.5m"),
    ],
)
def test_retry_topic_for_takes_the_largest_delay_not_above_else_the_smallest(
    delay_s: float, expected: str
) -> None:
    assert declared().retry_topic_for(delay_s) == expected


def test_diff_of_an_empty_cluster_creates_everything() -> None:
    topology = declared()
    plan = diff(topology, {})
    assert (plan.to_create, plan.in_sync, plan.drifts) == (topology.topics, (), ())
    assert plan.summary() == "11 to create, 0 in sync, 0 drift(s)"


def test_diff_of_a_matching_cluster_is_all_in_sync_and_ignores_other_prefixes() -> None:
    topology = declared()
    cluster = as_cluster(topology)
    cluster["other.jobs.high"] = ObservedTopic(name="other.jobs.high", partitions=1, configs={})
    plan = diff(topology, cluster)
    assert (plan.to_create, plan.in_sync, plan.drifts, plan.notes) == ((), topology.topics, (), ())
    assert not plan.has_drift


def test_wrong_partition_count_is_drift_explaining_keys_shrinking_and_options() -> None:
    topology = declared()
    plan = diff(topology, as_cluster(topology, jobs_high=2))
    partitions = [d for d in plan.drifts if d.field == "partitions"]
    assert [(d.topic, d.declared, d.actual) for d in partitions] == [("acme.jobs.high", "6", "2")]
    explanation = partitions[0].explanation
    for phrase in ("re-maps keys", "per-key ordering", "cannot shrink", "CONVEYOR_TOPIC_PREFIX"):
        assert phrase in explanation
    assert "acme.jobs.high" not in [spec.name for spec in plan.in_sync]
    assert plan.has_drift


def test_a_broken_job_ratio_is_reported_explicitly() -> None:
    topology = declared()
    plan = diff(topology, as_cluster(topology, jobs_high=2))
    ratio = [d for d in plan.drifts if d.field == "partition ratio"]
    assert [(d.topic, d.actual) for d in ratio] == [
        ("acme.jobs.*", "critical=8 high=2 normal=4 low=2")
    ]
    assert ratio[0].declared == "4:3:2:1 (critical=8 high=6 normal=4 low=2)"


def test_ratio_is_checked_across_existing_job_topics_only() -> None:
    topology = declared()
    cluster = as_cluster(topology)
    only_two = {name: cluster[name] for name in ("acme.jobs.critical", "acme.jobs.high")}
    assert diff(topology, only_two).drifts == ()
    only_two["acme.jobs.high"] = ObservedTopic(name="acme.jobs.high", partitions=8, configs={})
    ratio = [d for d in diff(topology, only_two).drifts if d.field == "partition ratio"]
    assert [d.actual for d in ratio] == ["critical=8 high=8"]


def test_a_cluster_built_with_another_unit_keeps_the_ratio_and_suggests_that_unit() -> None:
    topology = declared(partition_unit=2)
    plan = diff(topology, as_cluster(declared(partition_unit=3)))
    assert [(d.topic, d.field) for d in plan.drifts] == [
        (spec.name, "partitions") for spec in topology.topics if spec.role != "control"
    ]
    assert all("CONVEYOR_PARTITION_UNIT=3" in d.explanation for d in plan.drifts)
    assert plan.in_sync == (topology.spec("acme.jobs.control"),)


def test_partitions_with_no_fitting_unit_say_so() -> None:
    topology = declared()
    plan = diff(topology, as_cluster(topology, jobs_high=4))
    [drift] = [d for d in plan.drifts if d.field == "partitions"]
    assert "needs a multiple of 3" in drift.explanation


def test_shorter_retention_is_config_drift() -> None:
    topology = declared()
    cluster = as_cluster(topology)
    cluster["acme.jobs.low"] = ObservedTopic(
        name="acme.jobs.low",
        partitions=2,
        configs={"cleanup.policy": "delete", "retention.ms": str(DAY_MS)},
    )
    plan = diff(topology, cluster)
    assert [(d.topic, d.field, d.declared, d.actual) for d in plan.drifts] == [
        ("acme.jobs.low", "retention.ms", str(7 * DAY_MS), str(DAY_MS))
    ]
    assert "kafka-configs" in plan.drifts[0].explanation


@pytest.mark.parametrize("retention", [str(30 * DAY_MS), "-1"])
def test_longer_or_infinite_retention_is_in_sync_with_a_note(retention: str) -> None:
    topology = declared()
    cluster = as_cluster(topology)
    cluster["acme.jobs.low"] = ObservedTopic(
        name="acme.jobs.low",
        partitions=2,
        configs={"cleanup.policy": "delete", "retention.ms": retention},
    )
    plan = diff(topology, cluster)
    assert plan.drifts == ()
    assert topology.spec("acme.jobs.low") in plan.in_sync
    assert len(plan.notes) == 1
    assert plan.notes[0].startswith("acme.jobs.low: retention.ms is")


def test_a_different_cleanup_policy_is_config_drift() -> None:
    topology = declared()
    cluster = as_cluster(topology)
    spec = topology.spec("acme.jobs.events")
    cluster[spec.name] = ObservedTopic(
        name=spec.name, partitions=8, configs={**spec.configs, "cleanup.policy": "compact"}
    )
    assert [(d.topic, d.field, d.actual) for d in diff(topology, cluster).drifts] == [
        ("acme.jobs.events", "cleanup.policy", "compact")
    ]


def test_configs_the_broker_does_not_report_are_notes_not_drift() -> None:
    topology = declared()
    cluster = as_cluster(topology)
    cluster["acme.jobs.dlq"] = ObservedTopic(name="acme.jobs.dlq", partitions=2, configs={})
    plan = diff(topology, cluster)
    assert plan.drifts == ()
    assert [n.split(":")[0] for n in plan.notes] == ["acme.jobs.dlq", "acme.jobs.dlq"]


def test_replication_factor_is_checked_only_when_declared() -> None:
    assert diff(declared(), as_cluster(declared())).drifts == ()
    topology = declared(replication_factor=3)
    drifts = diff(topology, as_cluster(topology)).drifts
    assert {(d.field, d.declared, d.actual) for d in drifts} == {("replication factor", "3", "1")}
    assert len(drifts) == len(topology.topics)


def test_drift_str_names_topic_field_values_and_explanation() -> None:
    topology = declared()
    [drift, _ratio] = diff(topology, as_cluster(topology, jobs_high=2)).drifts
    assert str(drift) == (
        f"acme.jobs.high: partitions is 2 on the cluster, declared 6. {drift.explanation}"
    )


def test_priority_weights_are_4_3_2_1() -> None:
    assert [PRIORITY_WEIGHTS[p] for p in PRIORITIES] == [4, 3, 2, 1]
