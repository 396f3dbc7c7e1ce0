"""A worker whose start fails part-way closes what it had opened."""

from __future__ import annotations

import gc
import logging

import pytest

from conveyor import Settings
from conveyor.consumer.relay import RetryRelay
from conveyor.consumer.worker import Worker
from conveyor.errors import BrokerUnavailableError
from tests.worker_helpers import TEST_OPTIONS, prepare


async def test_a_start_that_fails_after_consumers_started_leaves_none_open(
    settings: Settings,
    schema_registry_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The job consumers and the DLQ sink joined their groups; the relay's start failed."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)

    async def refuse(self: RetryRelay) -> None:
        raise BrokerUnavailableError("the relay could not start (injected)")

    monkeypatch.setattr(RetryRelay, "start", refuse)
    worker = Worker(live, priorities=["normal", "low"], concurrency=2, options=TEST_OPTIONS)
    with caplog.at_level(logging.ERROR), pytest.raises(BrokerUnavailableError, match="injected"):
        await worker.run()
    gc.collect()  # an unclosed aiokafka consumer reports itself when it is collected
    unclosed = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
    assert unclosed == []
