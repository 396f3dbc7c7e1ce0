"""An in-memory OpenTelemetry exporter for tests, installed once per test process.

The global tracer provider can be set only once, so the first test that asks installs
it; spans are kept only while a test records, so other tests do not fill memory.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from conveyor.observability import tracing


class SpanRecorder(SpanExporter):
    """Keeps finished spans in memory while ``recording`` is set."""

    def __init__(self) -> None:
        self.recording = False
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.recording:
            with self._lock:
                self._spans.extend(spans)
        return SpanExportResult.SUCCESS

    def spans(self) -> list[ReadableSpan]:
        """The spans finished so far, in the order they ended."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        """Forgets every recorded span."""
        with self._lock:
            self._spans.clear()


@functools.cache
def span_recorder() -> SpanRecorder:
    """The process's recorder, installing an SDK tracer provider on first use."""
    provider = TracerProvider()
    recorder = SpanRecorder()
    provider.add_span_processor(SimpleSpanProcessor(recorder))
    trace.set_tracer_provider(provider)
    tracing.look_again()
    return recorder
