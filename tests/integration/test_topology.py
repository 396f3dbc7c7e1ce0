"""plan/apply against the real broker, checked through a separate AdminClient."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from conveyor import topology
from conveyor.embedded import free_port
from conveyor.errors import BrokerUnavailableError, TopologyDriftError
from conveyor.observability import librdkafka
from conveyor.settings import Settings
from tests.kafka_helpers import wait_visible

SEVEN_DAYS_MS = 7 * 86_400_000


def fresh_admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})


def partitions_on_broker(settings: Settings) -> dict[str, int]:
    """Partition counts of this test's topics, as a client that is not conveyor's sees them."""
    metadata = fresh_admin(settings).list_topics(timeout=10)
    return {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if name.startswith(f"{settings.topic_prefix}.")
    }


def expected_partitions(prefix: str) -> dict[str, int]:
    return {
        f"{prefix}.jobs.critical": 8,
        f"{prefix}.jobs.high": 6,
        f"{prefix}.jobs.normal": 4,
        f"{prefix}.jobs.low": 2,
        f"{prefix}.jobs.retry.5s": 4,
        f"{prefix}.jobs.retry.30s": 4,
        f"{prefix}.jobs.retry.5m": 4,
        f"{prefix}.jobs.dlq": 2,
        f"{prefix}.jobs.events": 8,
        f"{prefix}.jobs.control": 1,
        f"{prefix}.jobs.scheduled": 4,
    }


def test_apply_creates_every_topic_with_4_3_2_1_job_partitions(settings: Settings) -> None:
    result = topology.apply(settings)
    expected = expected_partitions(settings.topic_prefix)
    assert [spec.name for spec in result.created] == list(expected)
    assert partitions_on_broker(settings) == expected
    assert (result.plan.to_create, result.plan.drifts) == ((), ())


def test_second_apply_creates_nothing_and_reports_all_in_sync(settings: Settings) -> None:
    topology.apply(settings)
    second = topology.apply(settings)
    assert second.created == ()
    assert [spec.name for spec in second.plan.in_sync] == list(
        expected_partitions(settings.topic_prefix)
    )


def test_plan_of_an_untouched_prefix_lists_every_topic_to_create(settings: Settings) -> None:
    plan = topology.plan(settings)
    assert [spec.name for spec in plan.to_create] == list(
        expected_partitions(settings.topic_prefix)
    )
    assert (plan.in_sync, plan.drifts) == ((), ())


def test_job_topics_keep_at_least_seven_days_on_the_broker(settings: Settings) -> None:
    topology.apply(settings)
    declared = topology.Topology.from_settings(settings)
    resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in declared.job_topics]
    admin = fresh_admin(settings)  # kept alive until the futures resolve
    futures = admin.describe_configs(resources, request_timeout=10)
    retention = {
        resource.name: int(future.result(timeout=15)["retention.ms"].value)
        for resource, future in futures.items()
    }
    assert sorted(retention) == sorted(spec.name for spec in declared.job_topics)
    assert all(value >= SEVEN_DAYS_MS for value in retention.values()), retention


def test_wrong_partition_count_is_drift_and_apply_still_creates_the_rest(
    settings: Settings,
) -> None:
    declared = topology.Topology.from_settings(settings)
    high = declared.spec(f"{settings.topic_prefix}.jobs.high")
    admin = fresh_admin(settings)
    admin.create_topics([NewTopic(high.name, 2, -1, config=dict(high.configs))])[high.name].result(
        timeout=15
    )
    wait_visible(settings.kafka_bootstrap, high.name, 2)

    plan = topology.plan(settings)
    assert [(d.topic, d.field, d.declared, d.actual) for d in plan.drifts] == [
        (high.name, "partitions", "6", "2"),
        (f"{settings.topic_prefix}.jobs.*", "partition ratio", plan.drifts[1].declared, "high=2"),
    ]
    with pytest.raises(TopologyDriftError) as raised:
        topology.apply(settings)

    assert len(raised.value.drifts) == 2
    assert high.name in raised.value.drifts[0]
    expected = {**expected_partitions(settings.topic_prefix), high.name: 2}
    assert partitions_on_broker(settings) == expected


def test_unreachable_broker_fails_fast_naming_the_bootstrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing listening, plan raises BrokerUnavailableError once the connection check
    (librdkafka.CONNECT_TIMEOUT) runs out, not after the longer ADMIN_TIMEOUT_S."""
    monkeypatch.setattr(librdkafka, "CONNECT_TIMEOUT", 1.0)
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=bootstrap):
        topology.plan(Settings(kafka_bootstrap=bootstrap))
    assert time.monotonic() - started < 5.0
