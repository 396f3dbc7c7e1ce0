"""The Workers and Topology pages: heartbeat rows from Postgres, topics and lag from Kafka.

Workers come from the ``workers`` table that every worker's heartbeat
(``conveyor.consumer.heartbeat``) keeps fresh; a row is stale when its heartbeat is
older than :data:`STALE_AFTER_BEATS` intervals. The topology is ``conveyor topology
plan`` (``conveyor.topology.admin.plan``, in a thread) plus, per job topic partition,
the end offset, the worker group's committed offset and their difference, the lag. Kafka answers are
cached for :data:`CACHE_SECONDS`, so live pages do not query the cluster on every tick,
and a cluster that does not answer makes the figures unavailable, not the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError

from conveyor.consumer.kafka import aiokafka_security
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

    Lag is read with aiokafka on the UI's own event loop (an admin client for the
    groups' committed offsets, a group-less consumer for the end offsets); the plan
    with ``conveyor.topology.admin.plan`` in a thread, as the CLI does.

    Args:
        settings: The cluster and the topology's names.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lag: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            common = {
                "bootstrap_servers": self._settings.kafka_bootstrap,
                "request_timeout_ms": int(KAFKA_TIMEOUT * 1000),
                **aiokafka_security(self._settings),
            }
            admin_client = AIOKafkaAdminClient(client_id="conveyor-ui", **common)
            consumer = AIOKafkaConsumer(
                client_id="conveyor-ui", group_id=None, enable_auto_commit=False, **common
            )
            try:
                await admin_client.start()
                await consumer.start()
            except BaseException:
                await _quietly_close(admin_client, consumer)
                raise
            self._admin, self._consumer = admin_client, consumer
        return self._admin, self._consumer

    async def close(self) -> None:
        """Closes the Kafka clients, if they were opened."""
        admin_client, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        await _quietly_close(admin_client, consumer)

    async def lag(self) -> dict[str, Any]:
        """Per job topic partition: end offset, committed offset and lag, per priority.

        Returns:
            ``{"available": bool, "error": str | None, "priorities": {p: {"lag", "partitions"}}}``.
        """
        async with self._lock:
            if self._lag is not None and time.monotonic() - self._lag[0] < CACHE_SECONDS:
                return self._lag[1]
            try:
                async with asyncio.timeout(2 * KAFKA_TIMEOUT):
                    result = await self._read_lag()
            except (KafkaError, OSError, TimeoutError) as exc:
                await self.close()  # reconnect next time
                result = {"available": False, "error": str(exc) or type(exc).__name__}
                result["priorities"] = {}
            self._lag = (time.monotonic(), result)
            return result

    def lag_per_priority(self, lag: dict[str, Any]) -> dict[str, int | None]:
        """The total lag of each priority's group, None where unknown."""
        return {p: lag["priorities"].get(p, {}).get("lag") for p in PRIORITIES}

    async def _read_lag(self) -> dict[str, Any]:
        admin_client, consumer = await self._clients()
        names = [self._topology.job_topic(p) for p in PRIORITIES]
        described = {
            t["topic"]: [p["partition"] for p in t["partitions"]]
            for t in await admin_client.describe_topics(names)
            if t["error_code"] == 0
        }
        priorities: dict[str, Any] = {}
        for priority in PRIORITIES:
            topic = self._topology.job_topic(priority)
            numbers = described.get(topic)
            if not numbers:
                continue
            tps = [TopicPartition(topic, p) for p in sorted(numbers)]
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            group = self._topology.consumer_group(priority)
            try:
                committed = await admin_client.list_consumer_group_offsets(group, partitions=tps)
            except GroupCoordinatorNotAvailableError:
                committed = {}  # no group has committed on this cluster yet
            partitions = []
            for tp in tps:
                meta = committed.get(tp)
                done = -1 if meta is None else meta.offset
                end = ends[tp]
                partitions.append(
                    {
                        "partition": tp.partition,
                        "end": end,
                        "committed": None if done < 0 else done,
                        # A group that never committed reads from the beginning.
                        "lag": max(0, end - (starts[tp] if done < 0 else done)),
                    }
                )
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


async def _quietly_close(
    admin_client: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None
) -> None:
    if consumer is not None:
        with contextlib.suppress(KafkaError, OSError, RuntimeError):
            await consumer.stop()
    if admin_client is not None:
        with contextlib.suppress(KafkaError, OSError, RuntimeError):
            await admin_client.close()
