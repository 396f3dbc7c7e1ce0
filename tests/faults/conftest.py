"""Fixtures of the fault scenarios: brokers a test owns, and the session broker's log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.embedded import kafka
from tests import services


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Callable[..., kafka.ApacheKafka]]:
    """Starts Apache Kafka nodes this test owns (so it may kill, cut or restart them).

    Call it with ``ApacheKafka``'s keyword arguments; every node is closed at the end.
    """
    nodes: list[kafka.ApacheKafka] = []

    def start(**options: object) -> kafka.ApacheKafka:
        node = kafka.ApacheKafka(data_dir=tmp_path / f"kafka{len(nodes)}", **options)  # type: ignore[arg-type]
        nodes.append(node)
        node.start()
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
def broker_log(broker: services.Broker) -> Path:
    """The session broker's log, where the group coordinator logs member removals.

    The faults folder runs on Apache Kafka that the session launched (``make test``'s
    first pass); a broker it did not launch has no log here to read.
    """
    if broker.launched is None:
        pytest.fail(
            f"the fault harness reads the broker's log; this session's broker ({broker.where}) "
            "was not launched by it: unset CONVEYOR_KAFKA_BOOTSTRAP or run without Docker"
        )
    return broker.launched.log_path
