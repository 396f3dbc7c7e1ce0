"""``Worker``: register handlers, then run them on the job topics of some priorities."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from conveyor import dlq, gctuning
from conveyor.consumer import preflight
from conveyor.consumer.assembly import job_runner, open_pools
from conveyor.consumer.companions import (
    Companion,
    build_companions,
    helper_name,
    start_all,
)
from conveyor.consumer.control import ControlListener, run_until_cancelled
from conveyor.consumer.failures import RetryPolicy
from conveyor.consumer.handlers import DEFAULT_MAX_ATTEMPTS, Handler, HandlerRegistry, HandlerSpec
from conveyor.consumer.heartbeat import Heartbeat
from conveyor.consumer.options import DEFAULT_CONCURRENCY, WorkerOptions
from conveyor.consumer.outcome import WorkerStats
from conveyor.consumer.probes import WorkerProbes
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.runtime import ConsumerLoop
from conveyor.errors import ConfigurationError
from conveyor.observability.http import ProbeServer
from conveyor.observability.metrics import WorkerMetrics
from conveyor.scheduling import recurring
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES

log = logging.getLogger("conveyor.worker")


class Worker:
    """Runs registered handlers for the jobs of some priorities.

    Args:
        settings: Broker, database, registry and topic settings.
        priorities: The priorities served; each is one consumer group on its topic.
        concurrency: Jobs running at once, shared by weight 4:3:2:1 across priorities.
        worker_id: This process's name in job leases; host name and a random suffix by default.
        options: Runtime tuning; see ``WorkerOptions``.

    Example::

        worker = Worker(Settings.from_env(), priorities=["critical", "high"])

        @worker.handler("email.send", max_attempts=3)
        async def send(ctx: JobContext, payload: dict) -> dict:
            await ctx.db.execute("INSERT INTO sent (job_id) VALUES ($1)", ctx.job_id)
            return {"sent": True}
    """

    def __init__(
        self,
        settings: Settings,
        *,
        priorities: Sequence[str] = PRIORITIES,
        concurrency: int = DEFAULT_CONCURRENCY,
        worker_id: str | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.metrics = WorkerMetrics()
        self.http_port: int | None = None
        self._registry = HandlerRegistry()
        self._stop = asyncio.Event()  # a stop() before run() is kept for it
        self._running = False
        self._loop: ConsumerLoop | None = None
        self._helpers: dict[str, asyncio.Task[None]] = {}
        self._stop_tasks: list[asyncio.Task[Any]] = []
        self._schedules: dict[str, recurring.ScheduleSpec] = {}
        self.priorities: list[str] = []
        self.concurrency = 0
        self.configure(priorities=priorities, concurrency=concurrency)

    def configure(
        self,
        *,
        priorities: Sequence[str] | None = None,
        concurrency: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """Changes the priorities, concurrency or metrics port before the worker runs (the
        CLI's flags).

        Args:
            priorities: The priorities to serve.
            concurrency: Jobs running at once.
            metrics_port: Port of ``/metrics``, ``/healthz`` and ``/readyz``; 0 serves none.
                Overrides ``Settings.metrics_port`` (``CONVEYOR_METRICS_PORT``).

        Raises:
            ConfigurationError: A priority is unknown, none is given, concurrency < 1, or
                the port is outside 0-65535.
        """
        if metrics_port is not None:
            if not 0 <= metrics_port <= 65535:
                raise ConfigurationError("metrics_port", f"must be 0-65535, got {metrics_port}")
            self.settings = self.settings.replace(metrics_port=metrics_port)
        if priorities is not None:
            unknown = [p for p in priorities if p not in PRIORITIES]
            if unknown or not priorities:
                raise ConfigurationError(
                    "priorities",
                    f"expected some of {', '.join(PRIORITIES)}, got {list(priorities)}",
                )
            self.priorities = [p for p in PRIORITIES if p in priorities]
        if concurrency is not None:
            if concurrency < 1:
                raise ConfigurationError("concurrency", f"must be >= 1, got {concurrency}")
            self.concurrency = concurrency

    def handler(
        self,
        job_type: str,
        *,
        schema: Any = None,
        max_attempts: int | None = None,
        retry: Any = None,
        ordering: str = "none",
        timeout: float | None = None,
        duration: str = "short",
    ) -> Callable[[Handler], Handler]:
        """Registers the decorated function as the handler of ``job_type``.

        Args:
            job_type: The job type, like ``"email.send"``.
            schema: The payload's Avro schema (dict, ``PayloadSchema`` or dataclass).
            max_attempts: Attempts before the job is dead-lettered (default: the retry
                policy's, 5).
            retry: A ``RetryPolicy`` (exponential backoff with jitter and a cap).
            ordering: ``"none"`` or ``"key"`` (retries hold only that key's mailbox).
            timeout: Seconds an attempt may run.
            duration: ``"long"`` for jobs that renew their lease while running.
        """

        def register(func: Handler) -> Handler:
            self._registry.add(
                HandlerSpec(
                    type=job_type,
                    func=func,
                    schema=schema,
                    max_attempts=max_attempts
                    or (
                        retry.max_attempts
                        if isinstance(retry, RetryPolicy)
                        else DEFAULT_MAX_ATTEMPTS
                    ),
                    retry=retry,
                    ordering=ordering,
                    timeout=timeout,
                    duration=duration,
                )
            )
            return func

        return register

    def schedule(
        self,
        name: str,
        *,
        cron: str,
        type: str,
        payload: Any = None,
        timezone: str = "UTC",
        priority: str = "normal",
        key: str | None = None,
        tenant_id: str | None = None,
        catch_up: str = "last",
    ) -> None:
        """Declares a recurring job, stored (upserted) in Postgres when the worker starts.

        Each tick is submitted once however many workers declare it: its job id derives
        from (name, tick time). Pause, resume or remove it with ``conveyor schedule``.

        Args:
            name: Unique name of the schedule.
            cron: Five-field cron expression (``"0 8 * * *"``), read in ``timezone``.
            type: The job type submitted at each tick.
            payload: The job's payload (JSON-compatible).
            timezone: IANA zone name; ticks follow its DST changes.
            priority: The jobs' priority.
            key: The jobs' entity key.
            tenant_id: The jobs' tenant.
            catch_up: Ticks missed while no scheduler ran: ``"none"`` skips them,
                ``"last"`` (default) submits the latest, ``"all"`` submits each.

        Raises:
            ScheduleError: Invalid cron expression, unknown time zone, bad type or
                catch_up.
        """
        spec = recurring.ScheduleSpec(
            name=name,
            cron=cron,
            type=type,
            payload=payload,
            timezone=timezone,
            priority=priority,
            key=key,
            tenant_id=tenant_id,
            catch_up=catch_up,
        )
        spec.check()
        self._schedules[name] = spec

    @property
    def schedules(self) -> list[recurring.ScheduleSpec]:
        """The recurring schedules declared with :meth:`schedule`."""
        return list(self._schedules.values())

    @property
    def registry(self) -> HandlerRegistry:
        """The registered handlers, by job type."""
        return self._registry

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this worker holds now."""
        if self._loop is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self._loop.owned)

    @property
    def joined(self) -> bool:
        """Every consumer has joined its group: the worker receives jobs (see ``/readyz``)."""
        return self._loop is not None and self._loop.joined

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return 0 if self._loop is None else self._loop.in_flight

    def stop(self) -> None:
        """Asks the worker to stop: no new fetches, in-flight jobs get the grace period.

        Called before :meth:`run` starts (a Ctrl-C during a CLI's start-up), it makes that
        run stop as soon as it has started.
        """
        self._stop.set()

    async def run(self) -> None:
        """Runs until ``stop()``; then finishes or cuts off in-flight jobs, commits, leaves.

        Before it joins any group it checks that the registry answers, the migrations are
        applied and the topics exist (``WorkerOptions.check_at_start``).

        Raises:
            ConveyorError: A start-up check failed; its message says what to run.
        """
        self._running = True
        try:
            await self._run()
        finally:
            self._running = False
            self._stop = asyncio.Event()  # for a next run; a stop() until then is for it

    async def _run(self) -> None:
        if self.options.check_at_start:
            await preflight.check(self.settings)
        pool, status_pool = await open_pools(
            self.settings,
            self.options,
            concurrency=self.concurrency,
            schedules=self._schedules.values(),
        )
        serde = Serde(self.settings)
        publisher = FailurePublisher(self.settings, serde=serde)
        server: ProbeServer | None = None
        heartbeat: Heartbeat | None = None
        try:
            runner = job_runner(
                self.settings,
                self.options,
                worker_id=self.worker_id,
                registry=self._registry,
                stats=self.stats,
                metrics=self.metrics,
                pools=(pool, status_pool),
                serde=serde,
                publisher=publisher,
            )
            control = ControlListener(self.settings, serde=serde, runner=runner)
            await control.start()
            control_task = asyncio.create_task(run_until_cancelled(control))
            self._helpers = {"control listener": control_task}
            try:
                self._loop = ConsumerLoop(
                    self.settings,
                    priorities=self.priorities,
                    concurrency=self.concurrency,
                    runner=runner,
                    serde=serde,
                    publisher=publisher,
                    stats=self.stats,
                    metrics=self.metrics,
                    options=self.options,
                )
                probes = WorkerProbes(
                    asyncio.get_running_loop(),
                    self._loop,
                    pool,
                    self.metrics,
                    self._stop.is_set,
                    helpers=self.helper_problem,
                    publisher=lambda: publisher.problem,
                )
                server = self._serve(probes)
                gauges = asyncio.create_task(probes.refresh_dlq_size(self.options.metrics_interval))
                self._stop_tasks.append(gauges)
                heartbeat = Heartbeat(pool, self)
                self._stop_tasks.append(asyncio.create_task(heartbeat.run()))
                companions = self._companions(pool, serde)
                await start_all(self._loop, companions)
                await self._run_jobs(self._loop, self._run_companions(companions))
            finally:
                control_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control_task
                await control.stop()
        finally:
            for task in self._stop_tasks:
                task.cancel()
            await asyncio.gather(*self._stop_tasks, return_exceptions=True)
            self._stop_tasks.clear()
            if heartbeat is not None:
                await heartbeat.leave()
            if server is not None:
                await asyncio.to_thread(server.stop)
            await publisher.close()
            await asyncio.gather(pool.close(), status_pool.close())
            serde.close()

    async def _run_jobs(self, loop: ConsumerLoop, companions: list[asyncio.Task[None]]) -> None:
        """Runs the started consumers until the stop, then waits for the companions."""
        try:
            with gctuning.tuned(self.settings.gc_threshold):
                await loop.run(self._stop)
        finally:
            self._stop.set()
            await asyncio.gather(*companions, return_exceptions=True)

    def _run_companions(self, companions: Sequence[Companion]) -> list[asyncio.Task[None]]:
        """Starts each companion's run as a task that liveness watches."""
        runs = [asyncio.create_task(c.run(self._stop)) for c in companions]
        for companion, run in zip(companions, runs, strict=True):
            self._helpers[helper_name(companion)] = run
        return runs

    def helper_problem(self) -> str | None:
        """Which helper (control listener, retry relay, DLQ sink, scheduler, ledger) ended
        while the worker runs, and why; None while all run. A liveness check: a pod whose relay died
        would otherwise look healthy while retries pile up unrelayed."""
        if self._stop.is_set() or not self._running:
            return None
        for name, task in self._helpers.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"the {name} stopped" + (f": {error!r}" if error is not None else "")
        return None

    def _serve(self, probes: WorkerProbes) -> ProbeServer | None:
        """Starts the /metrics, /healthz and /readyz endpoint, unless the port is 0."""
        if not self.settings.metrics_port:
            return None
        server = ProbeServer(
            self.options.metrics_host,
            self.settings.metrics_port,
            metrics=self.metrics.render,
            health=probes.health,
            ready=probes.ready,
        )
        server.start()
        self.http_port = server.port
        log.info(
            "serving /metrics, /healthz and /readyz on %s:%d",
            self.options.metrics_host,
            server.port,
        )
        return server

    def _companions(self, pool: Any, serde: Serde) -> list[Companion]:
        """The relay, DLQ sink, scheduler and ledger that run beside the jobs, and the purge."""
        if self.options.purge_interval is not None:
            purge = asyncio.create_task(
                dlq.purge_periodically(
                    pool,
                    self.options.purge_interval,
                    job_retention_days=self.settings.job_retention_days,
                )
            )
            self._stop_tasks.append(purge)
        return build_companions(self.settings, self.options, pool, serde, self.metrics)

    def run_sync(self) -> None:
        """Runs the worker in a new event loop until SIGTERM or SIGINT."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())
