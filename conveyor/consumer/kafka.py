"""aiokafka plumbing shared by the worker's consumers: security options, the job
consumers' configuration, and lag."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from conveyor.consumer.offsets import OffsetTracker
from conveyor.consumer.options import WorkerOptions
from conveyor.errors import BrokerUnavailableError
from conveyor.observability.metrics import WorkerMetrics
from conveyor.settings import Settings
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.worker")


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the settings' security options."""
    kwargs: dict[str, Any] = {}
    if settings.security_protocol:
        kwargs["security_protocol"] = settings.security_protocol
    if settings.sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        password = settings.sasl_password
        kwargs["sasl_plain_password"] = None if password is None else password.get_secret_value()
    if settings.ssl_ca_location:
        from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - only with TLS

        key_password = settings.ssl_key_password
        kwargs["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_ca_location,
            certfile=settings.ssl_certificate_location,
            keyfile=settings.ssl_key_location,
            password=None if key_password is None else key_password.get_secret_value(),
        )
    return kwargs


async def start_group_consumer(
    settings: Settings,
    topic: str,
    *,
    group_id: str,
    client_id: str,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    rebalance_timeout_ms: int | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A started consumer of ``topic`` in ``group_id`` that commits by hand, from the
    earliest offset when the group is new (the DLQ sink's and the scheduler's). It is a
    static member when ``Settings.worker_instance_id`` is set.

    Args:
        rebalance_timeout_ms: How long the group waits for this member's revoke (None:
            the session timeout).
        listener: Called on revoke and assignment.

    Raises:
        BrokerUnavailableError: The consumer could not start (it is closed).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        rebalance_timeout_ms=rebalance_timeout_ms or session_timeout_ms,
        group_instance_id=settings.worker_instance_id,  # static membership
        **aiokafka_security(settings),
    )
    if listener is None:
        consumer.subscribe([topic])
    else:
        consumer.subscribe([topic], listener=listener)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailableError(
            f"cannot consume {topic} from Kafka at {settings.kafka_bootstrap}: {exc}; check "
            "CONVEYOR_KAFKA_BOOTSTRAP and that `conveyor topology apply` created the topics"
        ) from exc
    return consumer


MAX_PARTITION_FETCH_BYTES = 256 * 1024
"""Most bytes one fetch takes from one job partition (aiokafka's default is 1 MiB).

The worker takes at most 500 records a fetch and pauses a partition at
``max_buffered_per_partition`` (1,000) jobs; 256 KiB holds hundreds of small envelopes.
At 1 MiB each response carried thousands per partition, which aiokafka kept as raw
bytes, and copies of them while decoding, for partitions the worker had just paused:
with a 1,000,000-job backlog the worker process peaked at 211-272 MB against 137 MB
with this bound (ARCHITECTURE.md, "Time-ordered job ids"). The broker still returns a
first record batch larger than this whole, so no message is too big to read."""
FETCH_MAX_BYTES = 8 * 1024 * 1024
"""Most bytes one fetch response carries over all its partitions (default 50 MiB)."""


def job_consumer(
    settings: Settings,
    topology: Topology,
    priority: str,
    options: WorkerOptions,
    *,
    listener: ConsumerRebalanceListener,
) -> AIOKafkaConsumer:
    """The (not yet started) consumer of one priority's job topic, in its own group.

    Offsets are committed by hand, past finished jobs only; a new group reads from the
    earliest offset. The group waits for this member's revoke, which waits for running
    jobs (``effective_rebalance_timeout_ms``). It is a static member when
    ``Settings.worker_instance_id`` is set.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=topology.consumer_group(priority),
        client_id=f"conveyor-worker-{priority}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=options.session_timeout_ms,
        heartbeat_interval_ms=options.heartbeat_interval_ms,
        rebalance_timeout_ms=options.effective_rebalance_timeout_ms,
        max_poll_interval_ms=options.max_poll_interval_ms,
        fetch_max_wait_ms=options.fetch_max_wait_ms,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        group_instance_id=settings.worker_instance_id,
        **aiokafka_security(settings),
    )
    consumer.subscribe([topology.job_topic(priority)], listener=listener)
    return consumer


async def report_lag(
    consumers: Mapping[str, AIOKafkaConsumer],
    *,
    owned: Callable[[], Collection[TopicPartition]],
    offsets: OffsetTracker,
    topology: Topology,
    metrics: WorkerMetrics,
    interval: float,
) -> None:
    """Sets each priority's queue-depth (Kafka's lag) and backlog (jobs not finished)
    gauges every ``interval`` seconds, for the partitions ``owned()`` returns then."""
    while True:
        for priority, consumer in consumers.items():
            topic = topology.job_topic(priority)
            held = [tp for tp in owned() if tp.topic == topic]
            try:
                found = await positions(consumer, held)
            except (KafkaError, KeyError) as exc:  # a rebalance or an outage: next round
                log.debug("lag of %s not measured: %s", topic, exc)
                continue
            lag = sum(max(0, end - committed) for end, committed in found.values())
            backlog = sum(offsets.backlog(tp, *at) for tp, at in found.items())
            metrics.queue_depth.labels(priority).set(lag)
            metrics.backlog.labels(priority).set(backlog)
        await asyncio.sleep(interval)


async def consumer_lag(consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition]) -> int:
    """Messages of ``partitions`` past the group's committed offsets (Kafka's consumer lag).

    A partition the group never committed counts from its beginning offset, where a new
    group with ``auto_offset_reset="earliest"`` starts reading.
    """
    return sum(
        max(0, end - committed)
        for end, committed in (await positions(consumer, partitions)).values()
    )


async def positions(
    consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's end offset and the group's committed offset (its beginning offset
    when the group never committed there)."""
    if not partitions:
        return {}
    ends = await consumer.end_offsets(list(partitions))
    starts: dict[TopicPartition, int] | None = None
    found: dict[TopicPartition, tuple[int, int]] = {}
    for tp in partitions:
        committed = await consumer.committed(tp)
        if committed is None:
            if starts is None:
                starts = await consumer.beginning_offsets(list(partitions))
            committed = starts[tp]
        found[tp] = (ends[tp], committed)
    return found
