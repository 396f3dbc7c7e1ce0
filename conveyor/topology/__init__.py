"""Topology as code: the declared topics and groups, and plan/apply against a cluster.

``Topology.from_settings(settings)`` names every topic and consumer group conveyor
uses; ``plan`` compares it with a cluster and ``apply`` creates what is missing.
"""

from __future__ import annotations

from conveyor.topology.admin import ADMIN_TIMEOUT_S, ApplyResult, apply, diff, plan
from conveyor.topology.model import (
    PRIORITIES,
    PRIORITY_WEIGHTS,
    ROLES,
    Drift,
    ObservedTopic,
    Plan,
    RetryTopic,
    TopicSpec,
    Topology,
)

__all__ = [
    "ADMIN_TIMEOUT_S",
    "PRIORITIES",
    "PRIORITY_WEIGHTS",
    "ROLES",
    "ApplyResult",
    "Drift",
    "ObservedTopic",
    "Plan",
    "RetryTopic",
    "TopicSpec",
    "Topology",
    "apply",
    "diff",
    "plan",
]
