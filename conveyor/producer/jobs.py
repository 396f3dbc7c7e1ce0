"""Turning ``submit`` arguments into validated, encoded Kafka messages.

Everything here runs before anything is sent: a batch is validated whole, and one
:class:`~conveyor.errors.ValidationError` lists every invalid item by index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry import propagate

from conveyor.errors import ContractError, Problem, ValidationError
from conveyor.producer.jobids import new_job_id
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.payload import PayloadCodec
from conveyor.schemas.serde import Serde
from conveyor.topology.model import PRIORITIES, Topology

DURATIONS = ("short", "long")
DEFAULT_PRIORITY = "normal"
DEFAULT_DURATION = "short"
MAX_TYPE_LENGTH = 200

#: How far in the past a ``run_at`` may be and still run now: clocks of two hosts differ,
#: and a job built for "now" takes a moment to submit. Beyond it the caller made a mistake.
RUN_AT_TOLERANCE_S = 5.0
#: The longest delay accepted (about five years): a longer one is almost surely a unit
#: mistake (milliseconds, or an epoch timestamp passed as seconds).
MAX_DELAY_S = 5 * 366 * 86400.0

#: Namespace of dedupe job ids: uuid5(DEDUPE_NAMESPACE, tenant \x1f type \x1f dedupe key).
DEDUPE_NAMESPACE = uuid.UUID("6f1c2a7e-4d8b-5c39-9e0a-0c0ffee0b0a7")

HEADER_JOB_ID = "conveyor-job-id"
HEADER_JOB_TYPE = "conveyor-job-type"
HEADER_PRIORITY = "conveyor-priority"

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)*$")
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One item of a batch that overrides the batch's options.

    Args:
        payload: The job's payload.
        key: The entity key; jobs with the same key run one at a time, in order.
        priority: ``critical``, ``high``, ``normal`` or ``low``.
        dedupe_key: Makes the job id deterministic, so a repeat submit is the same job.
    """

    payload: Any
    key: str | None = _UNSET
    priority: str = _UNSET
    dedupe_key: str | None = _UNSET


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """The per-call options of ``submit``, shared by every item of a batch."""

    key: str | None = None
    priority: str = DEFAULT_PRIORITY
    dedupe_key: str | None = None
    tenant_id: str | None = None
    max_attempts: int | None = None
    delay: float | dt.timedelta | None = None
    duration: str = DEFAULT_DURATION
    run_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded message, ready for the Kafka producer."""

    job_id: str
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    priority: str | None = None  # a job's priority, for metrics; None for other records


def dedupe_job_id(job_type: str, dedupe_key: str, tenant_id: str | None = None) -> str:
    """The deterministic job id of a deduplicated job: UUIDv5 of (tenant, type, dedupe key)."""
    name = "\x1f".join((tenant_id or "", job_type, dedupe_key))
    return str(uuid.uuid5(DEDUPE_NAMESPACE, name))


def _delay_seconds(delay: float | dt.timedelta | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, dt.timedelta):
        return delay.total_seconds()
    return float(delay)


def type_problem(job_type: str) -> str | None:
    """What is wrong with ``job_type`` as a job type name, or None if it is valid."""
    if isinstance(job_type, str) and _TYPE_RE.match(job_type) and len(job_type) <= MAX_TYPE_LENGTH:
        return None
    return (
        f"{job_type!r} is not a job type: use dotted names of letters, digits, '_' and '-' "
        f"(like 'email.send'), at most {MAX_TYPE_LENGTH} characters"
    )


def _option_problems(job_type: str, options: Options) -> list[tuple[str, str]]:
    problems = []
    if (problem := type_problem(job_type)) is not None:
        problems.append(("type", problem))
    if options.duration not in DURATIONS:
        problems.append(("duration", f"{options.duration!r} is not one of {', '.join(DURATIONS)}"))
    if isinstance(options.delay, bool) or not isinstance(
        options.delay, int | float | dt.timedelta | None
    ):
        problems.append(("delay", f"expected seconds or a timedelta, got {options.delay!r}"))
    elif _delay_seconds(options.delay) < 0:
        problems.append(("delay", f"must be >= 0, got {options.delay!r}"))
    elif _delay_seconds(options.delay) > MAX_DELAY_S:
        problems.append(
            ("delay", f"must be at most {MAX_DELAY_S:.0f} s (5 years), got {options.delay!r}")
        )
    problems.extend(_run_at_problems(options))
    if options.max_attempts is not None and (
        not isinstance(options.max_attempts, int) or options.max_attempts < 1
    ):
        problems.append(("max_attempts", f"must be an integer >= 1, got {options.max_attempts!r}"))
    if options.tenant_id is not None and (
        not isinstance(options.tenant_id, str) or not options.tenant_id
    ):
        problems.append(("tenant_id", f"must be a non-empty string, got {options.tenant_id!r}"))
    return problems


def _run_at_problems(options: Options) -> list[tuple[str, str]]:
    run_at = options.run_at
    if run_at is None:
        return []
    if not isinstance(run_at, dt.datetime):
        return [("run_at", f"expected a timezone-aware datetime, got {run_at!r}")]
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        return [
            (
                "run_at",
                f"{run_at.isoformat()} has no time zone; pass an aware datetime such as "
                "datetime(..., tzinfo=datetime.UTC)",
            )
        ]
    if options.delay is not None:
        return [("run_at", "give either delay or run_at, not both")]
    late = (dt.datetime.now(dt.UTC) - run_at).total_seconds()
    if late > RUN_AT_TOLERANCE_S:
        return [
            (
                "run_at",
                f"{run_at.isoformat()} is {late:.0f} s in the past (tolerance "
                f"{RUN_AT_TOLERANCE_S:.0f} s); submit without run_at to run it now",
            )
        ]
    if -late > MAX_DELAY_S:
        return [("run_at", f"{run_at.isoformat()} is more than 5 years ahead")]
    return []


def due_time(options: Options, now: dt.datetime) -> dt.datetime | None:
    """When a job submitted ``now`` with ``options`` may start; None to start at once."""
    if options.run_at is not None:
        due = options.run_at.astimezone(dt.UTC)
        return due if due > now else None
    delay = _delay_seconds(options.delay)
    return now + dt.timedelta(seconds=delay) if delay > 0 else None


def _item_problems(priority: Any, key: Any, dedupe_key: Any) -> list[tuple[str, str]]:
    problems = []
    if priority not in PRIORITIES:
        problems.append(("priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}"))
    if key is not None and (not isinstance(key, str) or not key):
        problems.append(("key", f"must be a non-empty string, got {key!r}"))
    if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
        problems.append(("dedupe_key", f"must be a non-empty string, got {dedupe_key!r}"))
    return problems


class MessageBuilder:
    """Validates submissions and builds their envelopes, for both producer faces.

    Args:
        topology: Where jobs of each priority and delay go.
        serde: Encodes the envelope in Confluent wire format.
        codec: Validates and encodes payloads (JSON, or Avro for types with a schema).
        max_payload_bytes: Largest encoded payload accepted.
    """

    def __init__(
        self, *, topology: Topology, serde: Serde, codec: PayloadCodec, max_payload_bytes: int
    ) -> None:
        self._topology = topology
        self._serde = serde
        self._codec = codec
        self._max_payload_bytes = max_payload_bytes

    def problems(
        self, job_type: str, items: Sequence[Any], options: Options
    ) -> tuple[list[Problem], list[tuple[bytes, str]]]:
        """Validates every item; returns the problems and, when there are none, the payloads.

        The payloads are encoded once here so that sending does not encode them again.
        """
        found: list[Problem] = []
        encoded: list[tuple[bytes, str]] = []
        common = _option_problems(job_type, options)
        for index, item in enumerate(items):
            payload, priority, key, dedupe_key = self._resolve(item, options)
            issues = common + _item_problems(priority, key, dedupe_key)
            if not any(field == "type" for field, _ in issues):
                issues += self._payload_problems(job_type, payload, encoded)
            found.extend(Problem(index, field, message) for field, message in issues)
        return found, encoded

    def _payload_problems(
        self, job_type: str, payload: Any, encoded: list[tuple[bytes, str]]
    ) -> list[tuple[str, str]]:
        try:
            data, content_type = self._codec.encode(job_type, payload)
        except ContractError as exc:
            # Slow path only: list every problem of the payload, not just the first.
            listed = self._codec.problems(job_type, payload)
            return [("payload", message) for message in listed] or [("payload", str(exc))]
        if len(data) > self._max_payload_bytes:
            return [
                (
                    "payload",
                    f"{len(data)} bytes encoded exceeds the limit of {self._max_payload_bytes} "
                    "(setting max_payload_bytes); store large data elsewhere and send a reference",
                )
            ]
        encoded.append((data, content_type))
        return []

    @staticmethod
    def _resolve(item: Any, options: Options) -> tuple[Any, Any, Any, Any]:
        if not isinstance(item, Job):
            return item, options.priority, options.key, options.dedupe_key
        return (
            item.payload,
            options.priority if item.priority is _UNSET else item.priority,
            options.key if item.key is _UNSET else item.key,
            options.dedupe_key if item.dedupe_key is _UNSET else item.dedupe_key,
        )

    def build(
        self, job_type: str, items: Sequence[Any], options: Options, *, batch: bool
    ) -> list[Outgoing]:
        """Validates the whole submission, then encodes one message per item.

        Raises:
            ValidationError: One or more items are invalid; lists every problem.
        """
        problems, payloads = self.problems(job_type, items, options)
        if problems:
            raise ValidationError(problems, batch=batch)
        now = dt.datetime.now(dt.UTC)
        not_before = due_time(options, now)
        batch_id = new_job_id() if batch else None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        trace_headers: list[tuple[str, str | bytes | None]] = [
            (k, v.encode()) for k, v in carrier.items()
        ]
        out = []
        for item, (data, content_type) in zip(items, payloads, strict=True):
            _payload, priority, key, dedupe_key = self._resolve(item, options)
            job_id = (
                dedupe_job_id(job_type, dedupe_key, options.tenant_id)
                if dedupe_key is not None
                else new_job_id()
            )
            envelope = {
                "job_id": job_id,
                "type": job_type,
                "key": key,
                "priority": priority,
                "payload": data,
                "content_type": content_type,
                "tenant_id": options.tenant_id,
                "batch_id": batch_id,
                "dedupe_key": dedupe_key,
                "attempt": 1,
                "max_attempts": options.max_attempts,
                "submitted_at": now,
                "not_before": not_before,
                "duration": options.duration,
                "errors": [],
            }
            # A delayed job goes to the scheduled topic; the scheduler keeps it in
            # Postgres and releases it to its priority topic when due (conveyor.scheduling),
            # so it never sits at the head of a retry rung, whatever its horizon.
            topic = (
                self._topology.scheduled_topic
                if not_before is not None
                else self._topology.job_topic(priority)
            )
            headers = [
                (HEADER_JOB_ID, job_id.encode()),
                (HEADER_JOB_TYPE, job_type.encode()),
                (HEADER_PRIORITY, priority.encode()),
                *trace_headers,
            ]
            value = self._serde.encode(JOB_ENVELOPE, topic, envelope)
            out.append(Outgoing(job_id, topic, (key or job_id).encode(), value, headers, priority))
        return out


def as_items(payload_or_list: Any) -> tuple[list[Any], bool]:
    """Returns the items of a submission and whether it was a batch (a list)."""
    if isinstance(payload_or_list, list):
        return payload_or_list, True
    return [payload_or_list], False
