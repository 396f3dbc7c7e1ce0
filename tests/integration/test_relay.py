"""The retry relay on the real broker and registry: due times, isolation, bytes, restarts.

Timing tolerance: a republish is asserted to be read no earlier than ``not_before`` (the
relay checks the wall clock before it sends) and no later than ``not_before + 1 s``. The
relay's own budget is ~100 ms (an asyncio timer, a 1 ms linger and one acks=all round
trip); the reader adds its fetch wait (50 ms here), and the 2-core CI machine runs other
tests at once, so 1 s leaves room for scheduling noise while still failing on any
poll-granularity design (a sleep-the-poll-loop relay overshoots by its poll interval, and
Spring-style back-off by up to 10x the delay).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import Topology
from tests.conftest import settings_env
from tests.relay_helpers import (
    JobTopicReader,
    Written,
    envelope,
    reading,
    relay_settings,
    relaying,
    retry_message,
    write,
)
from tests.worker_helpers import eventually

#: How late a republish may be read: the relay's timer, one fetch and the reader's poll
#: on a shared 2-core machine (0.56 s seen under a parallel test run).
LATE_TOLERANCE = dt.timedelta(seconds=1.0)


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit (2 partitions per retry topic), registry set, topology applied."""
    return await relay_settings(settings, schema_registry_url)


@pytest.fixture
def serde(live: Settings) -> Iterator[Serde]:
    with Serde(live) as serde:
        yield serde


def assert_on_time(reader: JobTopicReader, written: Written, topic: str) -> None:
    [(read_at, record)] = reader.find(written)
    assert written.not_before is not None
    assert record.topic == topic
    assert read_at >= written.not_before, f"read {read_at} before not_before {written.not_before}"
    late = read_at - written.not_before
    assert late <= LATE_TOLERANCE, f"read {late.total_seconds():.3f}s after not_before"


async def test_messages_are_republished_to_their_priority_topic_when_due(
    live: Settings, serde: Serde
) -> None:
    """Due in 1.0 s and 2.5 s: each is read no earlier than not_before, at most 1 s after."""
    topology = Topology.from_settings(live)
    short, long_ = topology.retry_topics[0].name, topology.retry_topics[1].name
    async with reading(live) as reader, relaying(live, serde) as relay:
        first, m1 = retry_message(serde, short, 0, "high", 1.0)
        second, m2 = retry_message(serde, long_, 1, "low", 2.5)
        await asyncio.to_thread(write, live, [m1, m2])
        await eventually(lambda: reader.has(first) and reader.has(second), timeout=30, what="both")
        assert_on_time(reader, first, topology.job_topic("high"))
        assert_on_time(reader, second, topology.job_topic("low"))
        # The reader can see a record before the relay has handled its ack.
        await eventually(lambda: relay.stats.republished == 2, what="acks counted")
        assert relay.stats.held_max >= 1


async def test_a_long_wait_on_one_partition_does_not_delay_other_partitions(
    live: Settings, serde: Serde
) -> None:
    """A message due in 5 s is held while 0.5 s ones on another partition and topic go on time."""
    topology = Topology.from_settings(live)
    short, long_ = topology.retry_topics[0].name, topology.retry_topics[1].name
    async with reading(live) as reader, relaying(live, serde) as relay:
        slow, m_slow = retry_message(serde, short, 0, "normal", 5.0)
        fast_a, m_a = retry_message(serde, short, 1, "normal", 0.5)
        fast_b, m_b = retry_message(serde, long_, 0, "critical", 0.5)
        await asyncio.to_thread(write, live, [m_slow, m_a, m_b])
        await eventually(lambda: reader.has(fast_a) and reader.has(fast_b), timeout=30, what="fast")
        assert_on_time(reader, fast_a, topology.job_topic("normal"))
        assert_on_time(reader, fast_b, topology.job_topic("critical"))
        assert not reader.has(slow)
        # The reader can see a record before the relay has handled its ack.
        await eventually(lambda: relay.stats.republished == 2, what="acks counted")


async def test_original_bytes_key_and_headers_are_kept_and_bad_records_are_skipped(
    live: Settings, serde: Serde
) -> None:
    """Garbage is skipped and counted; an unknown priority goes to normal; bytes are unchanged."""
    topology = Topology.from_settings(live)
    topic = topology.retry_topics[0].name
    no_choices = dataclasses.replace(JOB_ENVELOPE, choices={})
    odd_value = serde.encode(no_choices, topic, envelope("urgent", None))
    odd = Written(odd_value, None, [], None)
    kept, m_kept = retry_message(serde, topic, 0, "critical", None)
    kept.headers.append(("x-binary", b"\x00\xff\x01"))
    async with reading(live) as reader, relaying(live, serde) as relay:
        await asyncio.to_thread(
            write,
            live,
            [(topic, 0, b"not avro at all", b"k", []), (topic, 0, odd_value, None, []), m_kept],
        )
        await eventually(lambda: reader.has(kept) and reader.has(odd), timeout=30, what="relayed")
        [(_, record)] = reader.find(kept)
        assert (record.topic, record.key, list(record.headers)) == (
            topology.job_topic("critical"),
            kept.key,
            kept.headers,
        )
        [(_, odd_record)] = reader.find(odd)
        assert (odd_record.topic, odd_record.key) == (topology.job_topic("normal"), None)
        assert (relay.stats.undecodable, relay.stats.republished) == (1, 2)


async def test_a_restart_resumes_after_the_committed_offset_and_delivers_held_messages(
    live: Settings, serde: Serde
) -> None:
    """Republished A is not sent again after a restart; B, held at stop, is sent by the next run.

    A and B share a partition, A first: a relay that re-read A would settle it before B, so
    the second relay's count at the moment B arrives shows whether A went out twice.
    """
    topology = Topology.from_settings(live)
    topic = topology.retry_topics[0].name
    first, m_first = retry_message(serde, topic, 1, "normal", 0.5)
    held, m_held = retry_message(serde, topic, 1, "normal", 4.0)
    async with reading(live) as reader:
        async with relaying(live, serde) as relay:
            await asyncio.to_thread(write, live, [m_first, m_held])
            await eventually(lambda: reader.has(first), timeout=30, what="A republished")
            # Delivery is at least once: only a committed republish is never repeated, so
            # stop once A's commit has landed (a commit can be deferred under heavy load).
            await eventually(
                lambda: any(o >= 1 for o in relay.committed.values()),
                timeout=30,
                what="A committed",
            )
        # The reader can see a record before the relay has handled its ack.
        await eventually(lambda: relay.stats.republished == 1, what="acks counted")
        assert relay.stats.held_max >= 1  # B was waiting when the relay stopped
        assert not reader.has(held)
        async with relaying(live, serde) as again:
            await eventually(lambda: reader.has(held), timeout=60, what="B after restart")
            assert again.stats.republished == 1
        assert (len(reader.find(first)), len(reader.find(held))) == (1, 1)


async def test_cli_relay_republishes_until_sigterm_and_exits_cleanly(
    live: Settings, serde: Serde
) -> None:
    """`conveyor relay` prints a start line, relays a due message, and exits 0 on SIGTERM."""
    topology = Topology.from_settings(live)
    env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}, **settings_env(live)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        "relay",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        started = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert started.decode().startswith(f"relay {live.topic_prefix}.relay: retry topics ")
        due, m_due = retry_message(serde, topology.retry_topics[0].name, 0, "low", None)
        async with reading(live) as reader:
            await asyncio.to_thread(write, live, [m_due])
            await eventually(lambda: reader.has(due), timeout=60, what="CLI relay republish")
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert (proc.returncode, out.decode()) == (
            0,
            "relay stopped: 1 republished, 0 undecodable skipped\n",
        ), err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_far_future_retry_hops_on_and_blocks_nothing_behind_it(
    settings: Settings, schema_registry_url: str
) -> None:
    """A wait of an hour written to the top rung (2 s here) is at the head of its
    partition; a 2.5 s one is written behind it. The hour-long one waits only the rung's
    delay at the head, then moves on to the tail (a hop), so the other leaves on time."""
    live = settings.replace(
        partition_unit=1, schema_registry_url=schema_registry_url, retry_delays=(1.0, 2.0)
    )
    await asyncio.to_thread(admin.apply, live)
    top = Topology.from_settings(live).retry_topics[-1].name
    with Serde(live) as serde:
        async with reading(live) as reader, relaying(live, serde) as relay:
            far, m_far = retry_message(serde, top, 0, "normal", 3600.0)
            near, m_near = retry_message(serde, top, 0, "normal", 2.5)
            await asyncio.to_thread(write, live, [m_far, m_near])
            await eventually(lambda: reader.has(near), timeout=30, what="the near retry")
            assert_on_time(reader, near, Topology.from_settings(live).job_topic("normal"))
            assert not reader.has(far)
            await eventually(lambda: relay.stats.hops >= 1, timeout=10, what="the far one's hop")
            # The reader can see a record before the relay has handled its ack.
            await eventually(lambda: relay.stats.republished == 1, what="acks counted")
