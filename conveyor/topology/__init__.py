"""Topology as code: the declared topics and groups, and plan/apply against a cluster.

``Topology.from_settings(settings)`` names every topic and consumer group conveyor
uses; ``plan`` compares it with a cluster and ``apply`` creates what is missing.
The pure comparison (:func:`diff`) is in the ``drift`` module, the cluster I/O in ``admin``.
"""

from __future__ import annotations

from conveyor.topology.admin import ADMIN_TIMEOUT_S, ApplyResult, apply, plan
from conveyor.topology.drift import Drift, ObservedTopic, Plan, diff
from conveyor.topology.model import (
    PRIORITIES,
    PRIORITY_WEIGHTS,
    ROLES,
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
