"""conveyor: a Python job processor on Apache Kafka.

This module only re-exports the public API; see README.md for a tour.
"""

from __future__ import annotations

from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DeliveryError,
    DeserializationError,
    PermanentError,
    Problem,
    SerializationError,
    ValidationError,
)
from conveyor.producer import AsyncProducer, Job, Producer
from conveyor.settings import Secret, Settings

__all__ = [
    "AsyncProducer",
    "ConfigurationError",
    "ConveyorError",
    "DeliveryError",
    "DeserializationError",
    "Job",
    "PermanentError",
    "Problem",
    "Producer",
    "Secret",
    "SerializationError",
    "Settings",
    "ValidationError",
]
