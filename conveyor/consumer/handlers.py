"""Handler registration: which function runs a job type, and with what policy; and the
call of a handler under its timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError

if TYPE_CHECKING:
    from conveyor.consumer.context import JobContext
    from conveyor.observability.hotseries import JobSeries

DEFAULT_MAX_ATTEMPTS = 5
ORDERINGS = ("none", "key")
DURATIONS = ("short", "long")

Handler = Callable[..., Any]


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and its policy.

    Args:
        type: The job type it runs.
        func: ``async def h(ctx, payload)`` or a plain function (run in a thread).
        schema: The payload's Avro schema (dict, ``PayloadSchema`` or dataclass), if any.
        max_attempts: Attempts before the job is dead-lettered.
        retry: The retry policy (used by the retry issue; kept here so handlers declare it once).
        ordering: ``"none"`` (retries leave the key's mailbox) or ``"key"`` (retries in place).
        timeout: Seconds an attempt may run before it is cancelled and counted as failed.
        duration: ``"long"`` renews the job's lease while it runs.
    """

    type: str
    func: Handler
    schema: Any = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry: Any = None
    ordering: str = "none"
    timeout: float | None = None
    duration: str = "short"

    @property
    def is_async(self) -> bool:
        """True for coroutine functions, which run on the event loop."""
        return inspect.iscoroutinefunction(self.func)


class HandlerRegistry:
    """The handlers of one worker, by job type."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def add(self, spec: HandlerSpec) -> None:
        """Registers a handler.

        Raises:
            ConfigurationError: The type already has a handler, or the policy is invalid.
        """
        if spec.type in self._specs:
            raise ConfigurationError("handler", f"job type {spec.type!r} already has a handler")
        if spec.ordering not in ORDERINGS:
            raise ConfigurationError(
                "ordering", f"expected one of {ORDERINGS}, got {spec.ordering!r}"
            )
        if spec.duration not in DURATIONS:
            raise ConfigurationError(
                "duration", f"expected one of {DURATIONS}, got {spec.duration!r}"
            )
        if spec.max_attempts < 1:
            raise ConfigurationError("max_attempts", f"must be >= 1, got {spec.max_attempts}")
        if spec.timeout is not None and spec.timeout <= 0:
            raise ConfigurationError("timeout", f"must be > 0, got {spec.timeout}")
        self._specs[spec.type] = spec

    def get(self, job_type: str) -> HandlerSpec | None:
        """The handler of a job type, or None."""
        return self._specs.get(job_type)

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


async def invoke(spec: HandlerSpec, ctx: JobContext, payload: Any, series: JobSeries) -> Any:
    """Calls ``spec``'s handler: an async one under its timeout, a plain one in a thread
    (where it cannot be interrupted); the run's duration goes to ``series``."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.is_async:
                return await spec.func(ctx, payload)
            return await asyncio.to_thread(spec.func, ctx, payload)
    finally:
        series.duration.observe(time.perf_counter() - started)
