"""The Workers and Topology pages: heartbeat rows from Postgres, topics and lag from Kafka.

Workers come from the ``workers`` table that every worker's heartbeat
(``conveyor.consumer.heartbeat``) keeps fresh; a row is stale when its heartbeat is
older than :data:`STALE_AFTER_BEATS` intervals. The topology is ``conveyor topology
plan`` (``conveyor.topology.admin.plan``) plus, per job topic partition, the end offset,
the worker group's committed offset and their difference, the lag. Kafka answers are
cached for :data:`CACHE_SECONDS`, so live pages do not query the cluster on every tick,
and a cluster that does not answer makes the figures unavailable, not the page.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, no __all__
    AdminClient,
    OffsetSpec,
)

from conveyor.db import database_errors
from conveyor.errors import ConveyorError
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import PRIORITIES, Topology
from conveyor.ui.queries import jsonable

STALE_AFTER_BEATS = 3
CACHE_SECONDS = 2.0
KAFKA_TIMEOUT = 5.0

_WORKERS = """
SELECT worker_id, host, pid, version, priorities, concurrency, in_flight, partitions,
       interval_s, started_at, heartbeat_at, stopped_at,
       extract(epoch FROM now() - heartbeat_at) AS age_s
FROM workers
WHERE stopped_at IS NULL OR stopped_at >= now() - interval '1 hour'
ORDER BY stopped_at IS NOT NULL, worker_id
"""


async def workers(pool: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    """Workers that run now or stopped within the hour; ``status`` is live, stale or stopped."""
    with database_errors("reading workers"):
        rows = await pool.fetch(_WORKERS)
    out = []
    for r in rows:
        row = {k: jsonable(v) for k, v in r.items()}
        row["age_s"] = round(float(r["age_s"]), 1)
        if r["stopped_at"] is not None:
            row["status"] = "stopped"
        elif r["age_s"] > STALE_AFTER_BEATS * r["interval_s"]:
            row["status"] = "stale"
        else:
            row["status"] = "live"
        out.append(row)
    return out


class Cluster:
    """Reads the topology and the worker groups' lag from Kafka, with a short cache.

    Args:
        settings: The cluster and the topology's names.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._client: AdminClient | None = None
        self._lag: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    def _admin(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient({**self._settings.kafka_config(), "log_level": 0})
        return self._client

    async def lag(self) -> dict[str, Any]:
        """Per job topic partition: end offset, committed offset and lag, per priority.

        Returns:
            ``{"available": bool, "error": str | None, "priorities": {p: {"lag", "partitions"}}}``.
        """
        async with self._lock:
            if self._lag is not None and time.monotonic() - self._lag[0] < CACHE_SECONDS:
                return self._lag[1]
            try:
                result = await asyncio.to_thread(self._read_lag)
            except (KafkaException, ConveyorError, RuntimeError) as exc:
                result = {"available": False, "error": str(exc), "priorities": {}}
            self._lag = (time.monotonic(), result)
            return result

    def lag_per_priority(self, lag: dict[str, Any]) -> dict[str, int | None]:
        """The total lag of each priority's group, None where unknown."""
        return {p: lag["priorities"].get(p, {}).get("lag") for p in PRIORITIES}

    def _read_lag(self) -> dict[str, Any]:
        client = self._admin()
        metadata = client.list_topics(timeout=KAFKA_TIMEOUT)
        priorities: dict[str, Any] = {}
        for priority in PRIORITIES:
            topic = self._topology.job_topic(priority)
            meta = metadata.topics.get(topic)
            if meta is None or not meta.partitions:
                continue
            tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            ends = client.list_offsets(
                {tp: OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
                request_timeout=KAFKA_TIMEOUT,
            )
            group = self._topology.consumer_group(priority)
            future = client.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, tps)], request_timeout=KAFKA_TIMEOUT
            )[group]
            committed = {tp.partition: tp.offset for tp in future.result().topic_partitions}
            partitions = []
            for tp, end_future in ends.items():
                end = end_future.result().offset
                done = committed.get(tp.partition, -1)
                lag = end if done < 0 else max(0, end - done)
                partitions.append(
                    {
                        "partition": tp.partition,
                        "end": end,
                        "committed": None if done < 0 else done,
                        "lag": lag,
                    }
                )
            partitions.sort(key=lambda p: p["partition"])
            priorities[priority] = {
                "topic": topic,
                "group": group,
                "lag": sum(p["lag"] for p in partitions),
                "partitions": partitions,
            }
        return {"available": True, "error": None, "priorities": priorities}

    async def topology(self) -> dict[str, Any]:
        """``topology plan`` as data (in sync, missing, drift) with the lag per partition."""
        try:
            plan = await asyncio.to_thread(admin.plan, self._settings, self._topology)
        except ConveyorError as exc:
            return {"available": False, "error": str(exc), "topics": [], "lag": await self.lag()}
        drifts: dict[str, list[dict[str, Any]]] = {}
        for d in plan.drifts:
            drifts.setdefault(d.topic, []).append(
                {
                    "field": d.field,
                    "actual": str(d.actual),
                    "declared": str(d.declared),
                    "explanation": d.explanation,
                }
            )
        missing = {spec.name for spec in plan.to_create}
        topics = []
        for spec in self._topology.topics:
            status = (
                "missing" if spec.name in missing else "drift" if spec.name in drifts else "in sync"
            )
            topics.append(
                {
                    "name": spec.name,
                    "partitions": spec.partitions,
                    "status": status,
                    "drifts": drifts.get(spec.name, []),
                    "configs": dict(sorted(spec.configs.items())),
                }
            )
        return {
            "available": True,
            "error": None,
            "summary": plan.summary(),
            "notes": list(plan.notes),
            "topics": topics,
            "lag": await self.lag(),
        }
