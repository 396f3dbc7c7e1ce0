"""WorkerOptions defaults that users meet without choosing them."""

from __future__ import annotations

from pathlib import Path

from aiokafka import ConsumerRebalanceListener

from conveyor import Settings, WorkerOptions
from conveyor.consumer.kafka import FETCH_MAX_BYTES, MAX_PARTITION_FETCH_BYTES, job_consumer
from conveyor.topology.model import Topology

ROOT = Path(__file__).resolve().parents[2]
#: Tansu holds an empty fetch for the whole max wait; an idle job waits up to that long
#: on a worker started by hand. 100 ms is the most the issue's newcomer should meet.
TANSU_IDLE_BUDGET_MS = 100


def test_the_default_fetch_wait_keeps_an_idle_job_on_tansu_from_waiting_long() -> None:
    """Kafka's own default (500 ms) made an idle job start 1.0-1.2 s after submit on Tansu."""
    assert WorkerOptions().fetch_max_wait_ms <= TANSU_IDLE_BUDGET_MS


def test_the_readme_and_architecture_state_the_default_fetch_wait() -> None:
    default = WorkerOptions().fetch_max_wait_ms
    assert f"`fetch_max_wait_ms` ({default} ms)" in (ROOT / "README.md").read_text()
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    assert f"default `fetch_max_wait_ms` is {default} ms" in architecture


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None:
        """Not called: the consumer never starts."""

    async def on_partitions_assigned(self, assigned: object) -> None:
        """Not called: the consumer never starts."""


async def test_a_job_consumer_takes_a_bounded_fetch_not_aiokafkas_megabyte_per_partition() -> None:
    """A paused partition's fetched bytes stay in aiokafka: 1 MiB each (its default) made
    the worker's peak memory with a deep backlog twice what this bound gives."""
    settings = Settings()
    consumer = job_consumer(
        settings,
        Topology.from_settings(settings),
        "normal",
        WorkerOptions(),
        listener=_Listener(),
    )
    try:
        # aiokafka keeps its fetch settings on the consumer until start() hands them on.
        assert consumer._max_partition_fetch_bytes == MAX_PARTITION_FETCH_BYTES == 256 * 1024
        assert consumer._fetch_max_bytes == FETCH_MAX_BYTES
    finally:
        await consumer.stop()  # never started: closes it without a broker
