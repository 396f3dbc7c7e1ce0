"""The worker's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs in a thread of its own, not on the worker's event loop, so it still answers
when the loop is stuck, and says so: ``/healthz`` asks the loop to run a no-op and
fails when it does not within a few seconds.

A probe is a function returning its checks, each ``None`` when fine or else the reason;
the endpoint answers 200 when every check passes and 503 otherwise, with the checks as
a JSON body (``{"status": "ok", "checks": {"event_loop": "ok", ...}}``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from conveyor.errors import ConfigurationError

log = logging.getLogger("conveyor.http")

Probe = Callable[[], Mapping[str, str | None]]


class ProbeServer:
    """Serves metrics and probes on ``host:port`` from a daemon thread.

    Args:
        host: The address to bind.
        port: The port to bind; 0 picks a free one (see ``port``).
        metrics: Renders the Prometheus text exposition.
        health: The liveness checks.
        ready: The readiness checks.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], bytes],
        health: Probe,
        ready: Probe,
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (HTTPStatus.OK, CONTENT_TYPE_LATEST, metrics()),
            "/healthz": lambda: _probe_response(health),
            "/readyz": lambda: _probe_response(ready),
        }
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(routes))
        except OSError as exc:
            raise ConfigurationError(
                "CONVEYOR_METRICS_PORT", f"cannot serve on {host}:{port}: {exc.strerror}"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="conveyor-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Starts answering requests."""
        self._thread.start()

    def stop(self) -> None:
        """Stops answering and closes the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _probe_response(probe: Probe) -> tuple[int, str, bytes]:
    try:
        checks = dict(probe())
    except Exception as exc:  # a failing probe is a failed check, never a crashed server
        checks = {"probe": f"{type(exc).__name__}: {exc}"}
    ok = all(reason is None for reason in checks.values())
    body = {
        "status": "ok" if ok else "fail",
        "checks": {name: reason or "ok" for name, reason in checks.items()},
    }
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    return status, "application/json", json.dumps(body).encode()


def _handler(
    routes: Mapping[str, Callable[[], tuple[int, str, bytes]]],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
                return
            self._send(*route())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
