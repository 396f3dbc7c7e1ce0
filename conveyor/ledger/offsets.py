"""The worker groups' committed offsets: where a queued job stands in its partition.

A worker group commits, per partition, the offset below which every job is finished.
A queued job's place in the queue is therefore its offset minus that committed offset
(the jobs ahead of it that no worker has finished), which ``JobStore.status`` reports
as ``position``; and the ledger starts a partition it never read at that offset, since
every job below it already has (or had) its row.

Both ask the broker through one confluent-kafka ``AdminClient``, made on first use: one
request for one group and a few partitions, never in a loop over jobs. Failures are not
errors here: the position is a courtesy, so an unreachable broker gives ``None``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from conveyor.observability import librdkafka
from conveyor.settings import Settings

log = logging.getLogger("conveyor.ledger")

REQUEST_TIMEOUT = 5.0
"""Seconds one admin request may take."""


class WorkerOffsets:
    """Reads consumer groups' committed offsets and partitions' first offsets.

    Thread-safe; call from a thread (``asyncio.to_thread``), since requests block.

    Args:
        settings: The broker and its security settings.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AdminClient | None = None
        self._lock = threading.Lock()

    def _admin(self) -> AdminClient:
        with self._lock:
            if self._client is None:
                quiet, _errors = librdkafka.client_config()
                self._client = AdminClient({**self._settings.kafka_config(), **quiet})
            return self._client

    def close(self) -> None:
        """Drops the client (librdkafka closes it when it is collected). Idempotent."""
        with self._lock:
            self._client = None

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition, None where it has none.

        Returns an empty dict when the broker did not answer.
        """
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions]
        )
        try:
            futures = self._admin().list_consumer_group_offsets(
                [request], request_timeout=REQUEST_TIMEOUT
            )
            answer: Any = futures[group].result(timeout=REQUEST_TIMEOUT * 2)
        except (KafkaException, TimeoutError, ValueError) as exc:
            log.info("committed offsets of %s on %s unknown: %s", group, topic, exc)
            return {}
        found: dict[int, int | None] = {}
        for tp in answer.topic_partitions:
            ok = tp.error is None and tp.offset >= 0
            found[tp.partition] = tp.offset if ok else None
        return found

    def earliest(self, topic: str, partition: int) -> int | None:
        """The partition's first offset (where a group that never committed starts)."""
        tp = TopicPartition(topic, partition)
        spec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        try:
            futures = self._admin().list_offsets({tp: spec}, request_timeout=REQUEST_TIMEOUT)
            answer: Any = futures[tp].result(timeout=REQUEST_TIMEOUT * 2)
        except (KafkaException, TimeoutError, ValueError) as exc:
            log.info("first offset of %s[%d] unknown: %s", topic, partition, exc)
            return None
        return int(answer.offset)

    def position(self, group: str, topic: str, partition: int, offset: int) -> int | None:
        """Jobs of the partition ahead of the one at ``offset`` that the group has not
        finished: ``offset`` minus the group's committed offset (or the partition's first
        offset when the group never committed). None when unknown or already passed."""
        committed = self.committed(group, topic, [partition]).get(partition)
        if committed is None:
            committed = self.earliest(topic, partition)
        if committed is None or offset < committed:
            return None
        return offset - committed


__all__ = ["REQUEST_TIMEOUT", "WorkerOffsets"]
