"""aiokafka plumbing shared by the worker's consumers: security options and lag."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from conveyor.errors import BrokerUnavailableError
from conveyor.settings import Settings


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
