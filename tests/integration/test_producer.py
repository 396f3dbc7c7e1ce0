"""The producer SDK against the real broker and the real schema registry."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from aiokafka.partitioner import murmur2
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import DeliveryError, Settings, ValidationError
from conveyor.producer import AsyncProducer, Job, Producer
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology import admin
from conveyor.topology.model import PRIORITIES, Topology
from tests.kafka_helpers import Record, read_topic


@pytest.fixture
def psettings(settings: Settings, schema_registry_url: str) -> Settings:
    """Isolated settings with the topology applied and the real registry."""
    s = settings.replace(schema_registry_url=schema_registry_url)
    admin.apply(s)
    return s


def decode_all(s: Settings, records: list[Record]) -> list[dict[str, object]]:
    """The records' envelopes, with uuid fields as strings for comparison with job ids."""
    with Serde(s) as serde:
        envelopes = [serde.decode(JOB_ENVELOPE, r.topic, r.value) for r in records]
    return [{k: str(v) if isinstance(v, uuid.UUID) else v for k, v in e.items()} for e in envelopes]


def decode(s: Settings, record: Record) -> dict[str, object]:
    """One record's envelope (see ``decode_all``)."""
    return decode_all(s, [record])[0]


def kafka_default_partition(key: bytes, partitions: int) -> int:
    """Java client's default partitioner: murmur2 of the key, positive, modulo partitions."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def test_jobs_land_on_their_priority_topic_with_the_envelope(psettings: Settings) -> None:
    topology = Topology.from_settings(psettings)
    with Producer(psettings) as producer:
        ids = {
            p: producer.submit("report.build", {"p": p}, priority=p, wait=True) for p in PRIORITIES
        }
    for priority, job_id in ids.items():
        [record] = read_topic(psettings.kafka_bootstrap, topology.job_topic(priority), 1)
        envelope = decode(psettings, record)
        assert envelope["job_id"] == job_id
        assert envelope["priority"] == priority
        assert envelope["type"] == "report.build"
        assert envelope["content_type"] == "application/json"
        assert envelope["payload"] == f'{{"p":"{priority}"}}'.encode()
        assert record.headers["conveyor-job-id"] == job_id.encode()
        assert record.headers["conveyor-job-type"] == b"report.build"


def test_same_key_goes_to_one_partition_in_order_chosen_like_the_java_client(
    psettings: Settings,
) -> None:
    topology = Topology.from_settings(psettings)
    topic = topology.job_topic("high")
    partitions = 3 * psettings.partition_unit
    keys = [f"customer-{i}" for i in range(12)]
    with Producer(psettings) as producer:
        for seq in range(5):
            for key in keys:
                producer.submit("invoice.send", {"seq": seq}, key=key, priority="high")
    records = read_topic(psettings.kafka_bootstrap, topic, 60)
    assert len(records) == 60
    by_key: defaultdict[bytes, list[Record]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        by_key[record.key].append(record)
    assert sorted(by_key) == sorted(k.encode() for k in keys)
    for raw_key, recs in by_key.items():
        assert {r.partition for r in recs} == {kafka_default_partition(raw_key, partitions)}
        in_order = sorted(recs, key=lambda r: r.offset)
        seqs = [e["payload"] for e in decode_all(psettings, in_order)]
        assert seqs == [f'{{"seq":{i}}}'.encode() for i in range(5)]


def test_key_defaults_to_the_job_id(psettings: Settings) -> None:
    with Producer(psettings) as producer:
        job_id = producer.submit("a.b", {}, wait=True)
    [record] = read_topic(
        psettings.kafka_bootstrap, Topology.from_settings(psettings).job_topic("normal"), 1
    )
    assert record.key == job_id.encode()


def test_dedupe_key_gives_the_same_id_twice_and_differs_by_tenant(psettings: Settings) -> None:
    with Producer(psettings) as producer:
        first = producer.submit("email.send", {"to": "a"}, dedupe_key="welcome-42", wait=True)
        second = producer.submit("email.send", {"to": "a"}, dedupe_key="welcome-42", wait=True)
        other_tenant = producer.submit("email.send", {}, dedupe_key="welcome-42", tenant_id="t2")
        plain = producer.submit("email.send", {"to": "a"})
    assert first == second
    assert other_tenant != first
    assert plain != first
    assert uuid.UUID(first).version == 5  # deterministic, whenever it is submitted
    assert uuid.UUID(plain).version == 7


def test_a_batch_of_1000_shares_one_batch_id_and_returns_ids_in_order(psettings: Settings) -> None:
    with Producer(psettings) as producer:
        ids = producer.submit("thumb.make", [{"n": i} for i in range(1000)], wait=True)
    assert len(ids) == len(set(ids)) == 1000
    topic = Topology.from_settings(psettings).job_topic("normal")
    envelopes = decode_all(psettings, read_topic(psettings.kafka_bootstrap, topic, 1000))
    assert len(envelopes) == 1000
    assert len({e["batch_id"] for e in envelopes}) == 1
    assert envelopes[0]["batch_id"] is not None
    by_id = {e["job_id"]: e["payload"] for e in envelopes}
    assert [by_id[i] for i in ids] == [f'{{"n":{i}}}'.encode() for i in range(1000)]
    # Time-ordered ids (UUIDv7), made in item order: Postgres' indexes on job_id take
    # the batch at their right edge.
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert ids == sorted(ids)
    assert uuid.UUID(str(envelopes[0]["batch_id"])).version == 7


def test_batch_items_override_priority_key_and_dedupe_key(psettings: Settings) -> None:
    topology = Topology.from_settings(psettings)
    with Producer(psettings) as producer:
        ids = producer.submit(
            "x.y",
            [{"i": 0}, Job({"i": 1}, priority="critical", key="k1", dedupe_key="d1")],
            wait=True,
        )
    [normal] = read_topic(psettings.kafka_bootstrap, topology.job_topic("normal"), 1)
    [critical] = read_topic(psettings.kafka_bootstrap, topology.job_topic("critical"), 1)
    assert decode(psettings, normal)["job_id"] == ids[0]
    crit = decode(psettings, critical)
    assert (crit["job_id"], crit["key"], crit["dedupe_key"]) == (ids[1], "k1", "d1")
    assert crit["batch_id"] == decode(psettings, normal)["batch_id"]


def test_an_invalid_batch_sends_nothing_and_reports_every_invalid_index(
    psettings: Settings,
) -> None:
    items = [
        {"ok": 1},
        {"bad": {1, 2}},  # a set is not JSON
        Job({"ok": 2}, priority="urgent"),
        {"ok": 3},
        Job({"ok": 4}, key=""),
    ]
    with Producer(psettings) as producer:
        with pytest.raises(ValidationError) as info:
            producer.submit("bulk.load", items)
        assert info.value.indexes == [1, 2, 4]
        assert producer.stats.submitted == 0
        sentinel = producer.submit("bulk.load", {"sentinel": True}, wait=True)
    topic = Topology.from_settings(psettings).job_topic("normal")
    records = read_topic(psettings.kafka_bootstrap, topic, 2, timeout=5)
    assert [decode(psettings, r)["job_id"] for r in records] == [sentinel]


def test_validate_returns_all_problems_without_sending(psettings: Settings) -> None:
    with Producer(psettings) as producer:
        problems = producer.validate("Bad Type!", [{"a": 1}, {"b": 2}], priority="nope", delay=-1)
        assert producer.stats.submitted == 0
    fields = sorted({(p.index, p.field) for p in problems})
    assert fields == [
        (0, "delay"),
        (0, "priority"),
        (0, "type"),
        (1, "delay"),
        (1, "priority"),
        (1, "type"),
    ]


def test_an_oversized_payload_is_refused_before_sending(psettings: Settings) -> None:
    small = psettings.replace(max_payload_bytes=1000)
    with Producer(small) as producer:
        with pytest.raises(ValidationError, match="exceeds the limit of 1000"):
            producer.submit("big.job", {"blob": "x" * 2000})
        assert producer.stats.submitted == 0
        producer.submit("big.job", {"blob": "x" * 100}, wait=True)


def test_delayed_jobs_go_to_the_scheduled_topic_with_not_before(psettings: Settings) -> None:
    topology = Topology.from_settings(psettings)
    before = time.time()
    with Producer(psettings) as producer:
        job_id = producer.submit("later.job", {}, delay=40, wait=True)
    [record] = read_topic(psettings.kafka_bootstrap, topology.scheduled_topic, 1)
    envelope = decode(psettings, record)
    assert envelope["job_id"] == job_id
    not_before = envelope["not_before"].timestamp()  # type: ignore[attr-defined]
    assert before + 40 <= not_before + 0.01 <= time.time() + 40 + 0.01


def test_wait_against_an_unreachable_broker_raises_within_the_timeout(
    psettings: Settings, unused_tcp_port: int
) -> None:
    dead = psettings.replace(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    producer = Producer(dead, delivery_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="not delivered"):
        producer.submit("a.b", {}, wait=True)
    assert time.monotonic() - started < 2.0 + 5.0
    producer.close(timeout=1)


def test_fire_and_forget_failures_are_raised_on_flush_and_counted(
    psettings: Settings, unused_tcp_port: int
) -> None:
    dead = psettings.replace(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    producer = Producer(dead, delivery_timeout=1.0)
    job_id = producer.submit("a.b", {})
    with pytest.raises(DeliveryError, match=job_id):
        producer.flush()
    assert (producer.stats.submitted, producer.stats.failed) == (1, 1)
    producer.close(timeout=1)


def test_fire_and_forget_failures_go_to_the_callback_when_given(
    psettings: Settings, unused_tcp_port: int
) -> None:
    dead = psettings.replace(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    failed: list[str] = []
    producer = Producer(dead, delivery_timeout=1.0, on_delivery_error=lambda j, e: failed.append(j))
    job_id = producer.submit("a.b", {})
    producer.close()  # does not raise: the callback took the failure
    assert failed == [job_id]


async def test_async_producer_submits_batches_and_waits_for_acks(psettings: Settings) -> None:
    async with AsyncProducer(psettings) as producer:
        one = await producer.submit("a.b", {"x": 1}, priority="low", dedupe_key="k")
        again = await producer.submit("a.b", {"x": 1}, priority="low", dedupe_key="k")
        batch = await producer.submit("a.b", [{"i": i} for i in range(10)], priority="low")
        with pytest.raises(ValidationError):
            await producer.submit("a.b", [{"ok": 1}, {"bad": object()}], priority="low")
        assert producer.stats.delivered == 12
    assert one == again
    topic = Topology.from_settings(psettings).job_topic("low")
    assert len(read_topic(psettings.kafka_bootstrap, topic, 12)) == 12
    assert len(batch) == 10


async def test_async_producer_against_an_unreachable_broker_raises(
    psettings: Settings, unused_tcp_port: int
) -> None:
    dead = psettings.replace(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    producer = AsyncProducer(dead, delivery_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        await producer.submit("a.b", {})
    assert time.monotonic() - started < 7.0
    await producer.close(timeout=1)


def test_headers_carry_trace_context_a_consumer_can_link_to(psettings: Settings) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("web request") as request_span,
        Producer(psettings) as producer,
    ):
        producer.submit("traced.job", {}, wait=True)
    [record] = read_topic(
        psettings.kafka_bootstrap, Topology.from_settings(psettings).job_topic("normal"), 1
    )
    carrier = {k: v.decode() for k, v in record.headers.items()}
    parent = propagate.extract(carrier)
    with tracer.start_as_current_span("run", context=parent, kind=trace.SpanKind.CONSUMER):
        pass
    run_span = next(s for s in exporter.get_finished_spans() if s.name == "run")
    assert run_span.context.trace_id == request_span.get_span_context().trace_id
    assert run_span.parent is not None
    assert run_span.parent.span_id == request_span.get_span_context().span_id
