"""Static membership: a worker restarted under the same ``worker_instance_id`` gets its
partitions back without rebalancing the other workers (issue 14, defect 11)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from conveyor import Settings, Worker
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

OPTIONS = dataclasses.replace(TEST_OPTIONS, run_relay=False, run_dlq_sink=False)


async def test_a_restart_under_the_same_instance_id_rebalances_no_other_worker(
    settings: Settings, schema_registry_url: str
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    static = live.replace(worker_instance_id="worker-0")
    other = Worker(live, priorities=["normal"], concurrency=2, options=OPTIONS)
    async with running(other):
        first = Worker(static, priorities=["normal"], concurrency=2, options=OPTIONS)
        async with running(first):
            await eventually(lambda: bool(first.assignment and other.assignment), what="a split")
        held, kept = first.assignment, other.assignment
        rebalances = other.stats.rebalances

        again = Worker(static, priorities=["normal"], concurrency=2, options=OPTIONS)
        async with running(again):
            await eventually(lambda: again.assignment == held, what="the same partitions back")
            # An observation window, not a wait for a result: no rebalance reaches the other.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    eventually(lambda: other.stats.rebalances > rebalances), timeout=3.0
                )
            assert other.stats.rebalances == rebalances
            assert other.assignment == kept
