"""What every local service shares: free ports, child processes that die with their
parent, and broker readiness (a client bootstraps and sees a broker, never a sleep)."""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from conveyor.errors import BrokerUnavailableError

log = logging.getLogger(__name__)

BROKER_START_TIMEOUT = 30.0
POSTGRES_PROBE_TIMEOUT = 3.0


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Asks Linux to SIGTERM the child when its parent dies, so no broker is orphaned."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_for_broker(
    bootstrap: str,
    timeout: float = BROKER_START_TIMEOUT,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Blocks until a client bootstraps from ``bootstrap`` and sees at least one broker.

    Args:
        bootstrap: The servers to bootstrap from.
        timeout: Seconds to wait.
        alive: Tells whether the broker's process still runs; waiting stops when it exits.

    Raises:
        BrokerUnavailableError: No broker answered within ``timeout`` seconds, or it exited.
    """
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - keep `import conveyor` light

    # A short reconnect backoff: librdkafka's default grows to 10 s while the broker starts.
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "log_level": 0, "reconnect.backoff.max.ms": 250}
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BrokerUnavailableError(f"the Kafka broker for {bootstrap} exited while starting")
        try:
            if admin.list_topics(timeout=min(2.0, timeout)).brokers:
                return
        except Exception as exc:  # KafkaException while the broker starts up
            last = exc
        time.sleep(0.1)
    raise BrokerUnavailableError(
        f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last}"
    )


def halt(
    process: subprocess.Popen[bytes] | None,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
) -> None:
    """Sends ``sig`` to a child that still runs and waits for it; SIGKILL after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ChildService:
    """A local service in a child process: ``start()`` on entering a ``with``, ``close()``
    (by default ``stop()``) on leaving it."""

    def start(self) -> None:
        """Starts the service and returns once a client can use it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stops the service."""
        raise NotImplementedError

    def close(self) -> None:
        """Stops the service and frees what it holds."""
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
