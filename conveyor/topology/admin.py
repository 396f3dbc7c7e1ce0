"""Plan and apply the declared topology against a Kafka cluster.

``plan`` describes the cluster and compares it with the declaration; ``apply`` creates
the missing topics and nothing else. An existing topic is never altered: partition
counts cannot change safely (adding partitions re-maps keys, Kafka cannot shrink a
topic) and configs may have been tuned on purpose, so both are reported as drift for an
operator to decide. The comparison is the pure function :func:`diff` over a description
of the cluster (``model.ObservedTopic``), so it is testable without a broker; the I/O
is one ``AdminClient`` whose failures become conveyor errors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, no __all__
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from conveyor.errors import BrokerUnavailableError, ConveyorError, TopologyDriftError, TopologyError
from conveyor.settings import Settings
from conveyor.topology.model import (
    BROKER_DEFAULT_REPLICATION,
    PRIORITIES,
    PRIORITY_WEIGHTS,
    Drift,
    ObservedTopic,
    Plan,
    TopicSpec,
    Topology,
)

ADMIN_TIMEOUT_S = 10.0
"""Longest wait for one admin request, so an unreachable cluster fails in bounded time."""

_VISIBILITY_POLL_S = 0.1
_UNAVAILABLE_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
)
_NEVER_REPARTITION = (
    "conveyor never changes partition counts: adding partitions re-maps keys to partitions, "
    "breaking per-key ordering for keys with jobs in flight, and Kafka cannot shrink a topic."
)
_MIGRATE = "migrate to new topics (a new CONVEYOR_TOPIC_PREFIX) and drain these"

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


def diff(topology: Topology, cluster: Mapping[str, ObservedTopic]) -> Plan:
    """Compares the declaration with a description of the cluster; no I/O.

    Args:
        topology: The declared topology.
        cluster: The cluster's topics by name; undeclared topics are ignored.
    """
    to_create: list[TopicSpec] = []
    in_sync: list[TopicSpec] = []
    drifts: list[Drift] = []
    notes: list[str] = []
    for spec in topology.topics:
        observed = cluster.get(spec.name)
        if observed is None:
            to_create.append(spec)
            continue
        found = [
            *_partition_drift(spec, observed),
            *_replication_drift(spec, topology.replication_factor, observed),
            *_config_drifts(spec, observed, notes),
        ]
        drifts.extend(found)
        if not found:
            in_sync.append(spec)
    ratio = _ratio_drift(topology, cluster)
    if ratio is not None:
        drifts.append(ratio)
    return Plan(
        to_create=tuple(to_create), in_sync=tuple(in_sync), drifts=tuple(drifts), notes=tuple(notes)
    )


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


class _Admin:
    """One AdminClient, with failures translated to conveyor errors."""

    def __init__(self, settings: Settings) -> None:
        self._bootstrap = settings.kafka_bootstrap
        # A plain list as error_cb (not a bound method) avoids a reference cycle, so the
        # client and its threads go away as soon as this object does.
        self._errors: list[KafkaError] = []
        config: dict[str, Any] = {
            **settings.kafka_config(),
            # librdkafka's own log lines would go to stderr and bury the one-line error
            # the CLI promises; the reason reaches the exception through error_cb.
            "log_level": 0,
            "error_cb": self._errors.append,
        }
        self._client = AdminClient(config)

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
        metadata = self._call(
            "list topics", lambda: self._client.list_topics(timeout=ADMIN_TIMEOUT_S)
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
        # "1/1 brokers are down" follows the useful reason (refused, TLS, SASL) every time.
        useful = [e for e in self._errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        if useful or self._errors:
            reason = (useful or self._errors)[-1].str()
        else:
            reason = "no answer" if exc is None else _reason(exc)
        return BrokerUnavailableError(
            f"no Kafka broker answered at {self._bootstrap} within {ADMIN_TIMEOUT_S:.0f}s "
            f"({reason}); check CONVEYOR_KAFKA_BOOTSTRAP and that the brokers are up"
        )


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _partition_drift(spec: TopicSpec, observed: ObservedTopic) -> list[Drift]:
    actual = observed.partitions
    if actual == spec.partitions:
        return []
    factor = spec.unit_factor
    if factor is None:
        fix = (
            "The control topic needs exactly 1 partition so every worker reads one ordered "
            f"stream: {_MIGRATE}, or re-create it while no worker runs."
        )
    elif actual % factor == 0:
        fix = (
            f"Set CONVEYOR_PARTITION_UNIT={actual // factor} to declare what the cluster "
            f"has, or {_MIGRATE}."
        )
    else:
        fix = (
            f"No CONVEYOR_PARTITION_UNIT declares {actual} partitions for this topic "
            f"(it needs a multiple of {factor}), so {_MIGRATE}."
        )
    return [
        Drift(
            topic=spec.name,
            field="partitions",
            declared=str(spec.partitions),
            actual=str(actual),
            explanation=f"{_NEVER_REPARTITION} {fix}",
        )
    ]


def _replication_drift(
    spec: TopicSpec, declared: int | None, observed: ObservedTopic
) -> list[Drift]:
    actual = observed.replication_factor
    if declared is None or actual is None or actual == declared:
        return []
    return [
        Drift(
            topic=spec.name,
            field="replication factor",
            declared=str(declared),
            actual=str(actual),
            explanation=(
                "conveyor never reassigns replicas: change them with "
                "kafka-reassign-partitions, or set CONVEYOR_REPLICATION_FACTOR to match."
            ),
        )
    ]


def _config_drifts(spec: TopicSpec, observed: ObservedTopic, notes: list[str]) -> list[Drift]:
    drifts: list[Drift] = []
    for key, declared in spec.configs.items():
        actual = observed.configs.get(key)
        if actual is None:
            notes.append(f"{spec.name}: the broker does not report {key}, so it was not checked")
        elif actual == declared:
            continue
        elif key == "retention.ms" and _retention_covers(actual, declared):
            notes.append(
                f"{spec.name}: retention.ms is {actual}, longer than the declared {declared}; "
                "kept, since the declared retention is a minimum"
            )
        else:
            risk = (
                "Messages may be deleted before they are processed. "
                if key == "retention.ms"
                else ""
            )
            drifts.append(
                Drift(
                    topic=spec.name,
                    field=key,
                    declared=declared,
                    actual=actual,
                    explanation=(
                        f"{risk}conveyor never alters an existing topic's configs; set it with "
                        f"kafka-configs --alter --entity-type topics --entity-name {spec.name} "
                        f"--add-config {key}={declared}, or change the settings to match."
                    ),
                )
            )
    return drifts


def _retention_covers(actual: str, declared: str) -> bool:
    try:
        value = int(actual)
        return value == -1 or value >= int(declared)  # -1 keeps messages forever
    except ValueError:
        return False


def _ratio_drift(topology: Topology, cluster: Mapping[str, ObservedTopic]) -> Drift | None:
    counts = {
        spec.priority: cluster[spec.name].partitions
        for spec in topology.job_topics
        if spec.priority is not None and spec.name in cluster
    }
    units = {count / PRIORITY_WEIGHTS[priority] for priority, count in counts.items()}
    if len(units) <= 1 and all(unit.is_integer() and unit >= 1 for unit in units):
        return None
    declared = " ".join(f"{p}={topology.partition_unit * PRIORITY_WEIGHTS[p]}" for p in PRIORITIES)
    return Drift(
        topic=f"{topology.prefix}.jobs.*",
        field="partition ratio",
        declared=f"4:3:2:1 ({declared})",
        actual=" ".join(f"{p}={counts[p]}" for p in PRIORITIES if p in counts),
        explanation=(
            "Each priority's workers scale to at most one consumer per partition, and the "
            "4:3:2:1 ratio is what gives higher priorities more parallelism; no partition "
            f"unit yields the counts on the cluster. {_NEVER_REPARTITION} So {_MIGRATE}."
        ),
    )
