"""Plan and apply the declared topology against a Kafka cluster.

``plan`` describes the cluster and compares it with the declaration; ``apply`` creates
the missing topics and nothing else. An existing topic is never altered: partition
counts cannot change safely (adding partitions re-maps keys, Kafka cannot shrink a
topic) and configs may have been tuned on purpose, so both are reported as drift for an
operator to decide. The comparison is the pure function ``diff`` of the ``drift`` module
over a description of the cluster (``ObservedTopic``), so it is testable without a
broker; this module holds the I/O, one ``AdminClient`` whose failures become conveyor
errors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, no __all__
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from conveyor.errors import BrokerUnavailableError, ConveyorError, TopologyDriftError, TopologyError
from conveyor.observability import librdkafka
from conveyor.settings import Settings
from conveyor.topology.drift import ObservedTopic, Plan, diff
from conveyor.topology.model import BROKER_DEFAULT_REPLICATION, TopicSpec, Topology

__all__ = ["ADMIN_TIMEOUT_S", "ApplyResult", "apply", "check_reachable", "diff", "plan"]

ADMIN_TIMEOUT_S = 10.0
"""Longest wait for one admin request, so an unreachable cluster fails in bounded time."""

_VISIBILITY_POLL_S = 0.1
_UNAVAILABLE_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApplyResult:
    """What ``apply`` did.

    Args:
        created: The topics this call created (not those a concurrent apply created).
        plan: The plan of the cluster after creating them.
    """

    created: tuple[TopicSpec, ...]
    plan: Plan


def plan(settings: Settings, topology: Topology | None = None) -> Plan:
    """Describes the cluster and compares it with the declared topology.

    Args:
        settings: Connection settings, and the topology when ``topology`` is omitted.
        topology: The declaration; ``Topology.from_settings(settings)`` when omitted.

    Raises:
        BrokerUnavailableError: No broker answered within ``ADMIN_TIMEOUT_S``.
        TopologyError: The cluster refused to describe the topics.
    """
    declared = topology or Topology.from_settings(settings)
    return diff(declared, _Admin(settings).observe(declared))


def apply(
    settings: Settings, topology: Topology | None = None, *, raise_on_drift: bool = True
) -> ApplyResult:
    """Creates the declared topics the cluster lacks; never alters existing ones.

    Args:
        settings: Connection settings, and the topology when ``topology`` is omitted.
        topology: The declaration; ``Topology.from_settings(settings)`` when omitted.
        raise_on_drift: Raise when drift remains; when False, return it in the plan.

    Returns:
        The topics created and the plan of the cluster afterwards.

    Raises:
        BrokerUnavailableError: No broker answered within ``ADMIN_TIMEOUT_S``.
        TopologyError: A topic could not be created (the others were).
        TopologyDriftError: Existing topics differ from the declaration; the missing
            topics were created first.
    """
    declared = topology or Topology.from_settings(settings)
    admin = _Admin(settings)
    before = diff(declared, admin.observe(declared))
    after = before
    created: tuple[TopicSpec, ...] = ()
    if before.to_create:
        created = admin.create(before.to_create, declared.replication_factor)
        expected = {spec.name for spec in before.to_create}
        after = diff(declared, admin.observe(declared, expect=expected))
    if raise_on_drift and after.has_drift:
        raise TopologyDriftError([str(drift) for drift in after.drifts])
    return ApplyResult(created=created, plan=after)


def check_reachable(settings: Settings) -> None:
    """Returns once a broker answers a metadata request.

    Raises:
        BrokerUnavailableError: None answered within ``librdkafka.CONNECT_TIMEOUT``; the
            message names the address and ``CONVEYOR_KAFKA_BOOTSTRAP``.
    """
    _Admin(settings).ping()


class _Admin:
    """One AdminClient, with failures translated to conveyor errors."""

    def __init__(self, settings: Settings) -> None:
        self._bootstrap = settings.kafka_bootstrap
        # librdkafka's own lines go to Python logging at DEBUG, so they do not bury the
        # one-line error the CLI promises; the reason reaches it through error_cb (which
        # holds no reference to the client: no cycle, so the client goes away with this).
        quiet, self._errors = librdkafka.client_config()
        config: dict[str, Any] = {**settings.kafka_config(), **quiet}
        self._client = AdminClient(config)

    def ping(self) -> None:
        """Asks for metadata, so an unreachable cluster is one error."""
        self._call(
            "list topics", lambda: self._client.list_topics(timeout=librdkafka.CONNECT_TIMEOUT)
        )

    def observe(self, topology: Topology, expect: Collection[str] = ()) -> dict[str, ObservedTopic]:
        """Describes the declared topics that exist, waiting a bounded time for ``expect``.

        Freshly created topics can take a moment to appear in every broker's metadata.
        """
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            observed = self._observe_once(topology)
            if all(name in observed for name in expect) or time.monotonic() >= deadline:
                return observed
            time.sleep(_VISIBILITY_POLL_S)

    def _observe_once(self, topology: Topology) -> dict[str, ObservedTopic]:
        # The first request of a run is the connection check: a cluster that does not
        # answer it within CONNECT_TIMEOUT is reported as unreachable.
        metadata = self._call(
            "list topics", lambda: self._client.list_topics(timeout=librdkafka.CONNECT_TIMEOUT)
        )
        declared = {spec.name for spec in topology.topics}
        present = {
            name: meta
            for name, meta in metadata.topics.items()
            if name in declared and meta.partitions
        }
        configs = self._describe_configs(sorted(present))
        return {
            name: ObservedTopic(
                name=name,
                partitions=len(meta.partitions),
                configs=configs[name],
                replication_factor=max(len(p.replicas) for p in meta.partitions.values()),
            )
            for name, meta in present.items()
            if name in configs
        }

    def _describe_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        futures = self._call(
            "describe topic configs",
            lambda: self._client.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S),
        )
        described: dict[str, dict[str, str]] = {}
        for resource, future in futures.items():
            try:
                entries = future.result(timeout=ADMIN_TIMEOUT_S + 1)
            except KafkaException as exc:
                if _code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # created or deleted a moment ago; the caller treats it as absent
                raise self._translate(exc, f"describe the configs of {resource.name}") from exc
            except TimeoutError as exc:
                raise self._unavailable(None) from exc
            described[resource.name] = {
                key: entry.value for key, entry in entries.items() if entry.value is not None
            }
        return described

    def create(
        self, specs: tuple[TopicSpec, ...], replication_factor: int | None
    ) -> tuple[TopicSpec, ...]:
        """Creates ``specs`` in one request; returns those this call created."""
        replicas = BROKER_DEFAULT_REPLICATION if replication_factor is None else replication_factor
        new_topics = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=replicas,
                config=dict(spec.configs),
            )
            for spec in specs
        ]
        futures = self._call(
            "create topics",
            lambda: self._client.create_topics(
                new_topics, operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S
            ),
        )
        created: list[TopicSpec] = []
        failures: list[str] = []
        for spec in specs:
            try:
                futures[spec.name].result(timeout=ADMIN_TIMEOUT_S + 1)
            except KafkaException as exc:
                if _code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # a concurrent apply created it, which is all we wanted
                error = self._translate(exc, "create topics")
                if isinstance(error, BrokerUnavailableError):
                    raise error from exc
                failures.append(f"{spec.name}: {_reason(exc)}")
            except TimeoutError as exc:
                raise self._unavailable(None) from exc
            else:
                created.append(spec)
        if failures:
            raise TopologyError(
                f"could not create {len(failures)} topic(s) on {self._bootstrap} "
                f"(created {len(created)} others): " + "; ".join(failures)
            )
        return tuple(created)

    def _call(self, action: str, request: Callable[[], _T]) -> _T:
        try:
            return request()
        except KafkaException as exc:
            raise self._translate(exc, action) from exc

    def _translate(self, exc: KafkaException, action: str) -> ConveyorError:
        code = _code(exc)
        if code is None or code in _UNAVAILABLE_CODES:
            return self._unavailable(exc)
        return TopologyError(f"could not {action} on {self._bootstrap}: {_reason(exc)}")

    def _unavailable(self, exc: KafkaException | None) -> BrokerUnavailableError:
        self._client.poll(0)  # serves error_cb, which collects the underlying reasons
        reason = self._errors.reason(default="no answer" if exc is None else _reason(exc))
        return BrokerUnavailableError(librdkafka.unreachable(self._bootstrap, reason))


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
