"""Every error conveyor raises on purpose derives from :class:`ConveyorError`.

The tree::

    ConveyorError
    ├── ConfigurationError          a setting is missing or invalid
    ├── ServiceUnavailableError     a service conveyor needs did not answer
    │   ├── BrokerUnavailableError      Kafka
    │   ├── DatabaseUnavailableError    Postgres
    │   └── RegistryUnavailableError    the schema registry
    ├── TopologyError               the cluster cannot be brought to the declared topology
    │   └── TopologyDriftError          a topic exists but differs from its declaration
    ├── MigrationError              a database migration failed
    ├── ContractError               a message does not fit its Avro contract
    │   ├── SerializationError          encoding refused (invalid record, registry refusal)
    │   └── DeserializationError        bytes are not a decodable conveyor message
    │       └── UnknownSchemaError              the registry does not know the writer's id
    ├── ValidationError             submitted jobs are invalid; lists every problem
    ├── DeliveryError               the broker did not acknowledge a produced message
    │   ├── UncertainDeliveryError      timed out: the message may have been written anyway
    │   └── ProducerFatalError          the producer hit a fatal error and sends no more
    ├── LeaseLostError              a worker lost its lease on a job; its outcome is discarded
    ├── DlqEntryNotFound            no job_dlq row has the id asked for
    ├── ReplayRefused               a DLQ entry cannot be replayed (already replayed, undecodable)
    ├── ScheduleError               a recurring schedule is invalid (cron, time zone, catch_up)
    │   └── ScheduleNotFound            no recurring schedule has the name asked for
    └── PermanentError              raised by a handler: do not retry this job

Library errors (confluent-kafka, aiokafka, asyncpg, httpx) are translated at the
boundary with ``raise ... from exc`` so callers handle one family, and each message
says what failed and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for the annotation: conveyor.consumer.claims imports this module.
    from conveyor.consumer.claims import Lease


class ConveyorError(Exception):
    """Root of every error conveyor raises on purpose."""


class ConfigurationError(ConveyorError, ValueError):
    """A setting is missing or has an invalid value.

    Args:
        setting: The name of the offending setting (keyword or ``CONVEYOR_*`` variable).
        problem: What is wrong with it.
    """

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"invalid setting {setting}: {problem}")


class ServiceUnavailableError(ConveyorError):
    """A service conveyor depends on did not answer in time."""


class BrokerUnavailableError(ServiceUnavailableError):
    """The Kafka cluster could not be reached."""


class DatabaseUnavailableError(ServiceUnavailableError):
    """The Postgres database could not be reached or refused the connection."""


class RegistryUnavailableError(ServiceUnavailableError):
    """The schema registry could not be reached."""


class TopologyError(ConveyorError):
    """The cluster could not be brought to the declared topology."""


class TopologyDriftError(TopologyError):
    """One or more topics exist but differ from their declaration.

    Args:
        drifts: One human-readable explanation per drifted topic.
    """

    def __init__(self, drifts: Sequence[str]) -> None:
        self.drifts = list(drifts)
        super().__init__(
            f"{len(self.drifts)} topic(s) drifted from the declared topology: "
            + "; ".join(self.drifts)
        )


class MigrationError(ConveyorError):
    """A database migration could not be applied."""


class ContractError(ConveyorError):
    """A message does not fit its Avro contract."""


class SerializationError(ContractError):
    """A record could not be encoded (invalid for its schema, or the registry refused it)."""


class DeserializationError(ContractError):
    """Bytes could not be decoded as a conveyor message.

    Raised for bytes that are not Confluent wire format, that name a schema id the
    registry does not know, or whose Avro body does not decode. The worker routes
    such messages to the DLQ with ``error_reason = "Deserialization"``.
    """


class UnknownSchemaError(DeserializationError):
    """The registry answered that it does not know the writer schema id (HTTP 404).

    Permanent for one-off reads, but a worker first waits: a registry follower that lags
    its leader answers 404 for an id registered a moment ago. Only once
    ``WorkerOptions.unknown_schema_wait`` has passed is the message dead-lettered.

    Args:
        message: What failed.
        schema_id: The writer schema id the registry did not know.
    """

    def __init__(self, message: str, schema_id: int) -> None:
        self.schema_id = schema_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a submitted item is invalid.

    Args:
        index: Position of the item in the submitted list (0 for a single payload).
        field: The part that is wrong (``"type"``, ``"payload"``, ``"priority"``, ...).
        message: What is wrong, in words a caller can act on.
    """

    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"item {self.index}: {self.field}: {self.message}"


class ValidationError(ConveyorError, ValueError):
    """Submitted jobs are invalid; nothing was sent.

    Args:
        problems: Every problem found, in item order.
        batch: Whether a batch (a list) was submitted. The message of a single job
            names its problems without item indexes.
    """

    def __init__(self, problems: Sequence[Problem], *, batch: bool = True) -> None:
        self.problems = list(problems)
        self.batch = batch
        if batch:
            indexes = sorted({p.index for p in self.problems})
            summary = f"{len(self.problems)} problem(s) in item(s) {indexes}: " + "; ".join(
                str(p) for p in self.problems
            )
        else:
            summary = "invalid job: " + "; ".join(f"{p.field}: {p.message}" for p in self.problems)
        super().__init__(summary)

    @classmethod
    def single(cls, field: str, message: str) -> ValidationError:
        """A validation error about one field of a single job."""
        return cls([Problem(0, field, message)], batch=False)

    @property
    def indexes(self) -> list[int]:
        """The sorted indexes of the invalid items."""
        return sorted({p.index for p in self.problems})


class DeliveryError(ConveyorError):
    """The broker did not acknowledge a produced message."""


class UncertainDeliveryError(DeliveryError):
    """A message timed out on an idempotent producer: it may or may not have been written.

    librdkafka gives up on a message after ``delivery.timeout.ms`` even when the broker
    may already have appended it (the acknowledgement was lost or late). Sending it again
    may write it twice; with a ``dedupe_key`` (a deterministic job id) the worker runs
    the job once anyway, so a retry is safe.
    """


class ProducerFatalError(DeliveryError):
    """The producer hit a fatal error (an idempotence or fencing failure) and is unusable.

    Every later send raises this error; create a new producer (or restart the worker)
    to send again. Messages still queued when it happened were not delivered.
    """


class LeaseLostError(ConveyorError):
    """The job's lease was taken over, or the job already ended: this outcome is discarded.

    Another worker claimed the job (Kafka moved its partition), so this worker's result
    must not be recorded. The caller rolls back whatever it wrote with the outcome.

    Args:
        lease: The lease that was no longer current.
        action: What the worker tried to record (``complete``, ``fail``, ...).
    """

    def __init__(self, lease: Lease, action: str) -> None:
        self.lease = lease
        self.action = action
        super().__init__(
            f"job {lease.job_id}: cannot {action}: lease epoch {lease.epoch} of worker "
            f"{lease.owner} is no longer current (another worker took the job over, or it "
            "already ended); the outcome was discarded"
        )


class DlqEntryNotFound(ConveyorError, LookupError):
    """No ``job_dlq`` row has the id asked for (never existed, or purged after its replay).

    Args:
        entry_id: The entry number asked for, or the job id whose entry was looked for.
    """

    def __init__(self, entry_id: int | str) -> None:
        self.entry_id = entry_id
        what = f"DLQ entry {entry_id}" if isinstance(entry_id, int) else f"job {entry_id}"
        where = "does not exist" if isinstance(entry_id, int) else "has no DLQ entry"
        super().__init__(
            f"{what} {where} (replayed entries are purged after 30 days); "
            "`conveyor dlq list --all` shows the ids"
        )


class ReplayRefused(ConveyorError):
    """A DLQ entry cannot be replayed: it was replayed already, or it has no job to resubmit."""


class ScheduleError(ConveyorError, ValueError):
    """A recurring schedule is invalid: its cron expression, time zone, name or catch_up."""


class ScheduleNotFound(ScheduleError, LookupError):
    """No recurring schedule has the name asked for.

    Args:
        name: The schedule name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}; `conveyor schedule list` shows them")


class PermanentError(ConveyorError):
    """Raise from a handler to send the job to the DLQ without further attempts."""
