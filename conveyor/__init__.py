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
    SerializationError,
    ValidationError,
)
from conveyor.settings import Secret, Settings

__all__ = [
    "ConfigurationError",
    "ConveyorError",
    "DeliveryError",
    "DeserializationError",
    "PermanentError",
    "Secret",
    "SerializationError",
    "Settings",
    "ValidationError",
]
