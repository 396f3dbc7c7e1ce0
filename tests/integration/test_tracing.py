"""One trace per job: submit, every run, the retry hop and the DLQ sink, correctly parented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import JobContext, PermanentError, Producer, Settings, Worker
from conveyor.consumer.failures import RetryPolicy
from conveyor.topology.model import Topology
from tests.tracing_helpers import SpanRecorder, span_recorder
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

FAST = RetryPolicy(initial=0.2, multiplier=2.0, maximum=1.0, jitter=0.0)


@pytest.fixture
def spans() -> Iterator[SpanRecorder]:
    recorder = span_recorder()
    recorder.clear()
    recorder.recording = True
    try:
        yield recorder
    finally:
        recorder.recording = False
        recorder.clear()


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


def trace_of(recorder: SpanRecorder, job_id: str) -> list[ReadableSpan]:
    """The spans of the trace the job's submit started, in the order they ended."""
    submits = [
        s
        for s in recorder.spans()
        if s.kind is SpanKind.PRODUCER and (s.attributes or {}).get("job.id") == job_id
    ]
    if not submits:
        return []
    trace_id = submits[0].context.trace_id
    return [s for s in recorder.spans() if s.context.trace_id == trace_id]


def by_parent(spans: list[ReadableSpan]) -> dict[int | None, list[ReadableSpan]]:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)
    return children


def chain(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans from the root down, asserting each has exactly one child."""
    children = by_parent(spans)
    [node] = children[None]
    path = [node]
    while node.context.span_id in children:
        [node] = children[node.context.span_id]
        path.append(node)
    assert len(path) == len(spans), f"the trace is not one chain: {[s.name for s in spans]}"
    return path


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_retried_job_is_one_trace_from_submit_through_the_relay_to_its_success(
    live: Settings, spans: SpanRecorder
) -> None:
    topology = Topology.from_settings(live)
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("flaky.once", retry=FAST)
    async def flaky(ctx: JobContext, payload: Any) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with Producer(live) as producer:
        job_id = producer.submit("flaky.once", {"n": 1}, key="entity-1")
    async with running(worker):
        await eventually(lambda: len(trace_of(spans, job_id)) >= 5, what="5 spans in the trace")

    submit, first, retry, hop, second = chain(trace_of(spans, job_id))
    job_topic = topology.job_topic("normal")
    retry_topic = topology.retry_topic_for(FAST.delay(1))

    assert (submit.kind, submit.name) == (SpanKind.PRODUCER, f"send {job_topic}")
    assert attrs(submit)["messaging.system"] == "kafka"
    assert attrs(submit)["job.type"] == "flaky.once"
    assert attrs(submit)["job.priority"] == "normal"

    for run, attempt in ((first, 1), (second, 2)):
        a = attrs(run)
        assert (run.kind, run.name) == (SpanKind.CONSUMER, f"process {job_topic}")
        assert a["messaging.system"] == "kafka"
        assert a["messaging.destination.name"] == job_topic
        assert a["messaging.consumer.group.name"] == topology.consumer_group("normal")
        assert a["messaging.destination.partition.id"] in {"0", "1", "2"}
        assert isinstance(a["messaging.kafka.offset"], int)
        assert a["messaging.message.id"] == job_id
        assert (a["job.id"], a["job.type"], a["job.priority"]) == (job_id, "flaky.once", "normal")
        assert a["job.attempt"] == attempt
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert attrs(first)["job.outcome"] == "retried"
    assert second.status.status_code is not StatusCode.ERROR
    assert attrs(second)["job.outcome"] == "completed"

    assert (retry.kind, retry.name) == (SpanKind.PRODUCER, f"send {retry_topic}")
    assert attrs(retry)["job.attempt"] == 2
    assert (hop.kind, hop.name) == (SpanKind.PRODUCER, f"send {job_topic}")
    assert attrs(hop)["conveyor.relay.source"] == retry_topic
    assert (attrs(hop)["job.id"], attrs(hop)["job.attempt"]) == (job_id, 2)


async def test_a_dead_job_is_one_trace_from_submit_to_the_dlq_sink(
    live: Settings, spans: SpanRecorder
) -> None:
    topology = Topology.from_settings(live)
    worker = Worker(live, priorities=["high"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("charge.card")
    async def charge(ctx: JobContext, payload: Any) -> None:
        raise PermanentError("card declined")

    with Producer(live) as producer:
        job_id = producer.submit("charge.card", {}, priority="high")
    async with running(worker):
        await eventually(lambda: len(trace_of(spans, job_id)) >= 4, what="4 spans in the trace")

    submit, run, dead, sink = chain(trace_of(spans, job_id))
    assert (submit.kind, submit.name) == (SpanKind.PRODUCER, f"send {topology.job_topic('high')}")
    assert run.kind is SpanKind.CONSUMER
    assert run.status.status_code is StatusCode.ERROR
    assert (attrs(run)["job.outcome"], attrs(run)["job.attempt"]) == ("failed", 1)
    assert (dead.kind, dead.name) == (SpanKind.PRODUCER, f"send {topology.dlq_topic}")
    assert attrs(dead)["conveyor.dlq.reason"] == "Permanent"
    assert (sink.kind, sink.name) == (SpanKind.CONSUMER, f"process {topology.dlq_topic}")
    a = attrs(sink)
    assert a["messaging.consumer.group.name"] == f"{topology.prefix}.dlq-sink"
    assert (a["job.id"], a["job.type"], a["job.priority"]) == (job_id, "charge.card", "high")
    assert a["conveyor.dlq.reason"] == "Permanent"


async def test_a_submit_inside_a_span_continues_the_callers_trace(
    live: Settings, spans: SpanRecorder
) -> None:
    from opentelemetry import trace

    with (
        trace.get_tracer("test").start_as_current_span("web request") as request,
        Producer(live) as producer,
    ):
        job_ids = producer.submit("thumb.make", [{"n": 1}, {"n": 2}])
    [batch] = [s for s in spans.spans() if s.kind is SpanKind.PRODUCER]
    assert batch.parent is not None
    assert batch.parent.span_id == request.get_span_context().span_id
    assert attrs(batch)["messaging.batch.message_count"] == len(job_ids) == 2
