"""OpenTelemetry spans along a job's path: submit, run, retry publish, relay hop, DLQ sink.

conveyor uses only the OpenTelemetry API. With no SDK tracer provider installed, every
span is the API's no-op and only the incoming ``traceparent`` is passed on, so a job
keeps its trace through every hop at no cost. The process that wants spans exported
installs a provider (``configure_tracing`` does it for the CLI from ``OTEL_*``
variables); a library user's own provider is used as it is.

Each hop writes its own span's context into the headers of the message it sends, so
the spans of one job form one trace: submit -> run -> retry publish -> relay hop -> run,
or run -> DLQ publish -> DLQ sink.
Attributes follow the OpenTelemetry messaging semantic conventions, plus ``job.*``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

TRACER_NAME = "conveyor"
_PROPAGATED = frozenset({"traceparent", "tracestate", "baggage"})

Headers = list[tuple[str, str | bytes | None]]


def tracer() -> trace.Tracer:
    """conveyor's tracer from the global provider (a proxy until one is installed)."""
    return trace.get_tracer(TRACER_NAME)


#: When ``enabled`` last found no tracer provider (monotonic seconds), and whether one is
#: installed: OpenTelemetry installs one at most once, so a yes is final, and a no is
#: asked again after ``_RECHECK`` seconds (each asking reads the environment).
_looked = [-1e9, 0.0]
_RECHECK = 1.0


def enabled() -> bool:
    """Whether a tracer provider is installed; without one, spans record nothing.

    The worker then makes no per-job span at all: a message's own trace headers still
    pass on to its retry and DLQ records unchanged (``with_current_context``). A
    provider installed after the worker started is seen within a second.
    """
    if _looked[1]:
        return True
    now = time.monotonic()
    if now - _looked[0] < _RECHECK:
        return False
    _looked[0] = now
    provider = trace.get_tracer_provider()
    if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        _looked[1] = 1.0
    return bool(_looked[1])


def look_again() -> None:
    """Makes the next :func:`enabled` ask OpenTelemetry again (after a provider was
    installed in this process, for instance)."""
    _looked[0] = -1e9


def extract(
    headers: Mapping[str, bytes] | Sequence[tuple[str, Any]] | None,
) -> otel_context.Context:
    """The trace context carried by a message's headers (empty if none)."""
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    carrier = {
        k: v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        for k, v in items
        if k in _PROPAGATED and v is not None
    }
    return propagate.extract(carrier)


def with_current_context(headers: Sequence[tuple[str, Any]]) -> Headers:
    """The headers with their trace context replaced by the current one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        # No active span and no provider: pass the incoming context on unchanged.
        return list(headers)
    kept: Headers = [(k, v) for k, v in headers if k not in _PROPAGATED]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def job_attributes(
    *,
    job_id: str | None,
    job_type: str | None,
    priority: str | None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """The ``job.*`` attributes, skipping unknown values."""
    values = {
        "job.id": job_id,
        "job.type": job_type,
        "job.priority": priority,
        "job.attempt": attempt,
        "messaging.message.id": job_id,
    }
    return {k: v for k, v in values.items() if v is not None}


def kafka_attributes(
    *,
    operation: str,
    destination: str | None,
    partition: int | None = None,
    offset: int | None = None,
    group: str | None = None,
    key: str | bytes | None = None,
) -> dict[str, Any]:
    """Messaging semantic-convention attributes of a Kafka operation."""
    values: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send" if operation == "send" else "process",
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.destination.partition.id": None if partition is None else str(partition),
        "messaging.kafka.offset": offset,
        "messaging.consumer.group.name": group,
        "messaging.kafka.message.key": key.decode(errors="replace")
        if isinstance(key, bytes)
        else key,
    }
    return {k: v for k, v in values.items() if v is not None}


@contextlib.contextmanager
def send_span(destination: str | None, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A PRODUCER span, current for the block: headers built inside carry its context."""
    name = f"send {destination}" if destination else "send"
    attrs = {**kafka_attributes(operation="send", destination=destination), **attributes}
    with tracer().start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attrs) as span:
        yield span


@contextlib.contextmanager
def process_span(
    headers: Mapping[str, bytes] | Sequence[tuple[str, Any]] | None,
    *,
    destination: str,
    attributes: Mapping[str, Any],
) -> Iterator[Span]:
    """A CONSUMER span for handling one message, a child of the context in its headers."""
    parent = extract(headers)
    attrs = {**kafka_attributes(operation="process", destination=destination), **attributes}
    with tracer().start_as_current_span(
        f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attrs
    ) as span:
        yield span


def start_hop_span(
    headers: Sequence[tuple[str, Any]],
    *,
    source: str,
    destination: str,
    attributes: Mapping[str, Any],
) -> tuple[Span, Headers]:
    """Starts the relay's PRODUCER span for moving a message; returns it and new headers.

    The caller ends the span when the broker acknowledged (or refused) the message.
    """
    attrs = {
        **kafka_attributes(operation="send", destination=destination),
        "conveyor.relay.source": source,
        **attributes,
    }
    span = tracer().start_span(
        f"send {destination}", context=extract(headers), kind=SpanKind.PRODUCER, attributes=attrs
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        return span, with_current_context(headers)
    finally:
        otel_context.detach(token)


def end_with(span: Span, error: BaseException | None) -> None:
    """Ends a span started with ``start_hop_span``, recording an error if there was one."""
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    span.end()
