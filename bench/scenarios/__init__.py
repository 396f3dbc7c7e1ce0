"""The benchmark scenarios, in the order a run takes them.

Each is ``async def run(ctx: Context) -> dict``: it starts its own workers on its own
workspace and returns its figures (``params`` and ``contenders``). Latency comes after
throughput because it offers half of the maximum that throughput measured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.context import Context
from bench.scenarios import (
    keys,
    latency,
    memory,
    priority,
    scaling,
    scheduling,
    throughput,
    ui,
    visibility,
)

Scenario = Callable[[Context], Awaitable[dict[str, Any]]]

SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput.run,
    "latency": latency.run,
    "priority": priority.run,
    "keys": keys.run,
    "memory": memory.run,
    "scaling": scaling.run,
    "ui": ui.run,
    "scheduling": scheduling.run,
    "visibility": visibility.run,
}
