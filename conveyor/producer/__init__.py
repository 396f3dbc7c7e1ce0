"""The producer SDK: validated, keyed, priority-routed, idempotent job submission."""

from __future__ import annotations

from conveyor.producer.aio import AsyncProducer
from conveyor.producer.delivery import DeliveryStats
from conveyor.producer.jobs import Job, dedupe_job_id
from conveyor.producer.sync import Producer

__all__ = ["AsyncProducer", "DeliveryStats", "Job", "Producer", "dedupe_job_id"]
