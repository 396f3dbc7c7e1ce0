"""conveyor: a Python job processor on Apache Kafka.

This module only re-exports the public API; see README.md for a tour.
"""

from __future__ import annotations

from conveyor.consumer.context import JobContext
from conveyor.consumer.failures import RetryPolicy
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DeliveryError,
    DeserializationError,
    PermanentError,
    Problem,
    ScheduleError,
    SerializationError,
    ValidationError,
)
from conveyor.jobstore import JobStatus, JobStore, Progress, Transition
from conveyor.producer import AsyncProducer, Job, Producer
from conveyor.settings import Secret, Settings

__all__ = [
    "AsyncProducer",
    "ConfigurationError",
    "ConveyorError",
    "DeliveryError",
    "DeserializationError",
    "Job",
    "JobContext",
    "JobStatus",
    "JobStore",
    "PermanentError",
    "Problem",
    "Producer",
    "Progress",
    "RetryPolicy",
    "ScheduleError",
    "Secret",
    "SerializationError",
    "Settings",
    "Transition",
    "ValidationError",
    "Worker",
    "WorkerOptions",
]
