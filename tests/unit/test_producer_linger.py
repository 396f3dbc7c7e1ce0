"""The producer sends a job as soon as it can: no linger by default (issue 15).

librdkafka still batches what queues while a produce request is in flight; a linger on
top of that only held back a job submitted alone (ARCHITECTURE.md, eighth pass).
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Producer
from conveyor.producer import delivery
from conveyor.settings import Settings


def test_a_producer_sends_each_job_without_waiting_to_fill_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []
    real = delivery.producer_config

    def recorded(settings: Settings, *, delivery_timeout: float, linger_ms: int) -> Any:
        config = real(settings, delivery_timeout=delivery_timeout, linger_ms=linger_ms)
        made.append(config)
        return config

    monkeypatch.setattr(delivery, "producer_config", recorded)
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9", schema_registry_url="http://127.0.0.1:9"
    )  # nothing is sent, so nothing needs to answer
    with Producer(settings):
        pass
    with Producer(settings, linger_ms=5):
        pass
    assert [config["linger.ms"] for config in made] == [0, 5]
