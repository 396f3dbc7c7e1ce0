"""``tracing.enabled`` runs per job: it asks OpenTelemetry at most once a second while no
provider is installed, and never again once one is."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from conveyor.observability import tracing


def test_enabled_asks_at_most_once_a_second_until_a_provider_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[int] = []
    provider: list[trace.TracerProvider] = [trace.NoOpTracerProvider()]

    def get_tracer_provider() -> trace.TracerProvider:
        asked.append(1)
        return provider[0]

    monkeypatch.setattr(trace, "get_tracer_provider", get_tracer_provider)
    monkeypatch.setattr(tracing, "_looked", [-1e9, 0.0])

    assert [tracing.enabled(), tracing.enabled()] == [False, False]
    assert len(asked) == 1
    provider[0] = TracerProvider()
    assert tracing.enabled() is False  # the answer of a moment ago stands for a second
    tracing.look_again()
    assert [tracing.enabled(), tracing.enabled()] == [True, True]
    assert len(asked) == 2  # a provider, once installed, stays
