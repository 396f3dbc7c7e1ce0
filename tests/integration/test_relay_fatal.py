"""The retry relay on the real broker when its producer hits a fatal librdkafka error:
the relay ends its run with ``ProducerFatalError`` instead of retrying on a dead producer,
and ``conveyor relay`` exits 1 with one error line.

The fatal error is injected through the producer's ``error_cb`` (``Republisher._watch``),
as librdkafka reports one when idempotence breaks.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from conveyor.consumer.relay import RetryRelay
from conveyor.errors import ProducerFatalError
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology
from tests.conftest import settings_env
from tests.kafka_helpers import broken_on_first_send, fatal_error, one_error_line
from tests.relay_helpers import (
    OPTIONS,
    reading,
    relay_settings,
    relaying,
    retry_message,
    retry_partitions,
    write,
)
from tests.worker_helpers import eventually


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit (2 partitions per retry topic), registry set, topology applied."""
    return await relay_settings(settings, schema_registry_url)


@pytest.fixture
def serde(live: Settings) -> Iterator[Serde]:
    with Serde(live) as serde:
        yield serde


async def test_a_fatal_producer_error_ends_the_relay_instead_of_retrying(
    live: Settings, serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's producer reports a fatal error, then a due retry arrives: its republish
    fails for good, so the relay does not retry it with the dead producer but ends its run
    with ``ProducerFatalError``, committing nothing past the record. A new relay (a new
    producer) republishes it.

    The commit interval is long, so the run ends on the failed republish, not on the
    relay's periodic look at its producer."""
    topic = Topology.from_settings(live).retry_topics[0].name
    relay = RetryRelay(live, serde=serde, options=dataclasses.replace(OPTIONS, commit_interval=60))
    await relay.start()
    run = asyncio.create_task(relay.run(asyncio.Event()))
    due, m_due = retry_message(serde, topic, 0, "normal", None)
    async with reading(live) as reader:
        try:
            await eventually(lambda: relay.owned == retry_partitions(live), what="assignment")
            republisher = relay._republisher
            assert republisher is not None
            republisher._watch(fatal_error("Idempotent producer: sequence gap (injected)"))
            await asyncio.to_thread(write, live, [m_due])
            with pytest.raises(
                ProducerFatalError, match=r"the retry relay's producer for .* fatal"
            ):
                await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        assert relay.stats.republished == 0
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]
        assert not reader.has(due)
        async with relaying(live, serde):
            await eventually(lambda: reader.has(due), timeout=30, what="the next relay's republish")
        assert len(reader.find(due)) == 1


async def test_a_fatal_producer_error_ends_an_idle_relay(live: Settings, serde: Serde) -> None:
    """A fatal error while nothing is being republished also ends the run: the relay
    looks at its producer every commit interval, so liveness does not wait for a retry."""
    relay = RetryRelay(live, serde=serde, options=OPTIONS)
    await relay.start()
    run = asyncio.create_task(relay.run(asyncio.Event()))
    try:
        await eventually(lambda: relay.owned == retry_partitions(live), what="assignment")
        assert not run.done()
        republisher = relay._republisher
        assert republisher is not None
        republisher._watch(fatal_error("Idempotent producer: unknown producer id (injected)"))
        with pytest.raises(ProducerFatalError, match="unknown producer id"):
            await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_cli_relay_exits_with_one_error_line_when_its_producer_hits_a_fatal_error(
    live: Settings, serde: Serde
) -> None:
    """`conveyor relay` whose producer breaks exits 1 with one `conveyor: error:` line
    naming the fatal error: no traceback, no retry loop, no clean-stop line."""
    topology = Topology.from_settings(live)
    async with broken_on_first_send("relay", settings_env(live)) as proc:
        assert proc.stdout is not None
        started = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert started.decode().startswith(f"relay {live.topic_prefix}.relay: retry topics ")
        _due, m_due = retry_message(serde, topology.retry_topics[0].name, 0, "low", None)
        await asyncio.to_thread(write, live, [m_due])
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    error = one_error_line(proc.returncode, out, err)
    assert "the retry relay's producer" in error
    assert "hit a fatal error and sends no more: sequence gap (injected)" in error
    assert "retrying" not in err.decode()
