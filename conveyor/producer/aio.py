"""``AsyncProducer``: submit jobs from asyncio code (FastAPI, aiohttp)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self, overload

from conveyor.producer.jobs import Options, as_items
from conveyor.producer.sync import ProducerBase


class AsyncProducer(ProducerBase):
    """Submits jobs from asyncio code; an async context manager that flushes on exit.

    ``await submit(...)`` returns after the broker acknowledged (``wait=False`` returns
    once queued). Validation, encoding and queueing run in a worker thread, so the event
    loop never blocks on the schema registry or a full local queue.
    """

    @overload
    async def submit(
        self,
        job_type: str,
        payload_or_list: list[Any],
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = True,
    ) -> list[str]: ...
    @overload
    async def submit(
        self,
        job_type: str,
        payload_or_list: Any,
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = True,
    ) -> str: ...

    async def submit(
        self,
        job_type: str,
        payload_or_list: Any,
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = True,
    ) -> str | list[str]:
        """Submits one job or a batch; see ``Producer.submit`` for the arguments.

        Args:
            job_type: The job type.
            payload_or_list: The payload, or a list of payloads and ``Job`` items.
            key: Entity key.
            priority: ``critical``, ``high``, ``normal`` or ``low``.
            dedupe_key: Makes the id deterministic.
            tenant_id: The tenant that owns the job.
            max_attempts: Overrides the handler's attempt limit.
            delay: Seconds (or a timedelta) before the job may start, 0 to years; a
                delayed job is ``scheduled`` until the scheduler releases it.
            run_at: A timezone-aware datetime at which the job may start (instead of
                ``delay``); a naive one, or one in the past, is a ``ValidationError``.
            duration: ``"short"`` or ``"long"``.
            wait: Return only after the broker acknowledged (the default here).

        Returns:
            The job id, or the ids of a list in order.

        Raises:
            ValidationError: Something is invalid; nothing was sent.
            DeliveryError: The broker did not acknowledge within the delivery timeout.
        """
        items, batch = as_items(payload_or_list)
        options = Options(
            key, priority, dedupe_key, tenant_id, max_attempts, delay, duration, run_at
        )

        # to_thread copies contextvars, so the caller's trace context reaches the headers.
        ids, futures = await asyncio.to_thread(
            self._build_and_send, job_type, items, options, batch=batch
        )
        if wait:
            await asyncio.to_thread(self._core.wait, futures)
        return ids if batch else ids[0]

    async def flush(self, timeout: float | None = None) -> None:
        """Waits for every queued message; raises ``DeliveryError`` for failed ones."""
        await asyncio.to_thread(self._core.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flushes and releases the clients; raises ``DeliveryError`` for failed messages."""
        await asyncio.to_thread(self._close, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
