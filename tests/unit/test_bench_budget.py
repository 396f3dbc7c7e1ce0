"""The CPU budget's attribution of py-spy stacks to the worker's stages (bench.budget)."""

from __future__ import annotations

import pytest

from bench import budget

ROOT = "/repo/conveyor"
LIB = "/venv/lib/python3.11/site-packages"
LOOP = (
    "<module> (/repo/conveyor/__main__.py:4);run (/py/lib/python3.11/asyncio/runners.py:118);"
    "BaseEventLoop._run_once (/py/lib/python3.11/asyncio/base_events.py:1922);"
    "Handle._run (/py/lib/python3.11/asyncio/events.py:80)"
)


def stack(*frames: str) -> str:
    return ";".join((LOOP, *frames))


@pytest.mark.parametrize(
    ("frames", "stage"),
    [
        # A library call is charged to the conveyor code that made it.
        (
            (
                f"Committer.commit_now ({ROOT}/consumer/commits.py:80)",
                f"AIOKafkaConsumer.commit ({LIB}/aiokafka/consumer/consumer.py:600)",
            ),
            budget.COMMIT,
        ),
        (
            (
                f"ConsumerLoop._fetch ({ROOT}/consumer/runtime.py:215)",
                f"AIOKafkaConsumer.getmany ({LIB}/aiokafka/consumer/consumer.py:1200)",
            ),
            budget.FETCH,
        ),
        # The deepest conveyor frame decides: the mailbox add inside accept is the mailbox.
        (
            (
                f"ConsumerLoop._fetch ({ROOT}/consumer/runtime.py:220)",
                f"Intake.accept ({ROOT}/consumer/intake.py:120)",
                f"Mailboxes.add ({ROOT}/consumer/mailbox.py:90)",
            ),
            budget.MAILBOX,
        ),
        (
            (
                f"Intake.accept ({ROOT}/consumer/intake.py:100)",
                f"Serde.decode ({ROOT}/schemas/serde.py:200)",
            ),
            budget.DECODE,
        ),
        # One-purpose libraries below take the stack over from the orchestration around them.
        (
            (
                f"JobRunner.run ({ROOT}/consumer/execution.py:189)",
                f"MetricFamily.labels ({LIB}/prometheus_client/metrics.py:190)",
            ),
            budget.OBSERVABILITY,
        ),
        (
            (
                f"JobRunner.run ({ROOT}/consumer/execution.py:175)",
                f"Tracer.start_span ({LIB}/opentelemetry/sdk/trace/__init__.py:1100)",
            ),
            budget.OBSERVABILITY,
        ),
        (
            (
                f"StatusStore._claim_many ({ROOT}/consumer/status.py:230)",
                f"Connection.fetch ({LIB}/asyncpg/connection.py:690)",
            ),
            budget.STATUS,
        ),
        (("noop (/repo/bench/apps.py:48)",), budget.HANDLER),
        ((f"JobRunner.run ({ROOT}/consumer/execution.py:160)",), budget.RUNNER),
        # No conveyor frame: the library decides, and bare asyncio is the event loop.
        ((f"Fetcher._fetch_requests_routine ({LIB}/aiokafka/fetcher.py:400)",), budget.FETCH),
        ((f"BaseProtocol.data_received ({LIB}/asyncpg/protocol/protocol.pyx:10)",), budget.STATUS),
        (
            (
                f"PoolConnectionHolder.release ({LIB}/asyncpg/pool.py:274)",
                "_SelectorSocketTransport.write (/py/lib/python3.11/asyncio/selector_events.py:1)",
            ),
            budget.STATUS,
        ),
        (
            (
                "GroupCoordinator._do_commit_offsets"
                f" ({LIB}/aiokafka/consumer/group_coordinator.py:9)",
                f"AIOKafkaClient.send ({LIB}/aiokafka/client.py:500)",
            ),
            budget.COMMIT,
        ),
        ((), budget.LOOP),
    ],
)
def test_a_stack_is_charged_to_its_stage(frames: tuple[str, ...], stage: str) -> None:
    assert budget.stage_of(budget.frames(stack(*frames))) == stage


def test_budget_shares_the_cpu_out_by_samples_per_job() -> None:
    collapsed = "\n".join(
        [
            stack("noop (/repo/bench/apps.py:48)") + " 30",
            stack(f"StatusStore._claim_many ({ROOT}/consumer/status.py:230)") + " 60",
            stack() + " 10",
            # Blocked in librdkafka's poll and in the selector: left out of the shares.
            "Thread._bootstrap (/lib/python3.11/threading.py:995);"
            f"DeliveryCore._poll_loop ({ROOT}/producer/delivery.py:155) 40",
            stack("EpollSelector.select (/lib/python3.11/selectors.py:468)") + " 7",
            "garbage line without a count",
        ]
    )

    result = budget.budget(budget.classify(collapsed), cpu_s=2.0, jobs=10_000)

    per_stage = {row["stage"]: row for row in result["stages"]}
    assert result["samples"] == 100
    assert result["waiting_samples"] == 47
    assert result["us_per_job"] == 200.0
    assert per_stage[budget.HANDLER]["us_per_job"] == 60.0
    assert per_stage[budget.STATUS]["us_per_job"] == 120.0
    assert per_stage[budget.LOOP]["us_per_job"] == 20.0
    assert sum(row["share"] for row in result["stages"]) == pytest.approx(1.0)
    assert [row["stage"] for row in result["stages"]] == list(budget.STAGES)


def test_the_section_lists_every_stage_and_the_total() -> None:
    collapsed = stack("noop (/repo/bench/apps.py:48)") + " 5\n" + stack() + " 5"
    result = budget.budget(budget.classify(collapsed), cpu_s=1.0, jobs=1000)
    profile = {
        "meta": {
            "date": "today",
            "broker": "Apache Kafka",
            "backlog": 1000,
            "concurrency": 32,
            "rate": 250,
            "jobs": 1000,
            "seconds": 1.0,
            "cpu_s": 1.0,
            "machine": {"cpus": 2, "load_average": [0.5, 0.5, 0.5]},
        },
        **result,
    }

    section = budget.render(profile)

    assert section.startswith("## Per-job CPU budget of the worker")
    for stage in budget.STAGES:
        assert f"| {stage} |" in section
    assert "| handler call | 50.0 | 500.0 | `noop` 100% |" in section
    assert "**1,000.0**" in section
