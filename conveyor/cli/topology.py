"""``conveyor topology plan|apply``: diff the declared topics with the cluster, create missing.

Neither command changes an existing topic. Drift (a partition count, the 4:3:2:1 ratio,
a config or the replication factor that differs from the declaration) is printed with
why conveyor leaves it alone and what an operator can do, and exits with code 3.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterable

from conveyor import topology
from conveyor.cli import common
from conveyor.settings import Settings

_WIDTH = 100
_INDENT = "    "

_DESCRIPTION = """\
Compare the topics conveyor declares (job topics <prefix>.jobs.critical|high|normal|low
with partitions 4:3:2:1 x CONVEYOR_PARTITION_UNIT, the retry ladder, dlq, events and
control) with the Kafka cluster, and create the missing ones. Existing topics are never
changed: a partition count, the 4:3:2:1 ratio or a config that differs is reported as
drift, with what an operator can do about it."""

_PLAN_HELP = """\
Print what apply would do: '+ create' for missing topics, '=' for topics in sync and
'!' for drift. Changes nothing. Exit code 0 when there is no drift (even with topics to
create), 3 on drift, 1 when the cluster cannot be reached."""

_APPLY_HELP = """\
Create the missing topics (never alters or shrinks existing ones) and print what was
created, or 'nothing to change' when every topic exists. Exit code 0 when the cluster
matches the declaration afterwards, 3 on drift (the missing topics are still created),
1 when the cluster cannot be reached."""


def register(subparsers: common.SubParsers) -> None:
    """Adds ``topology plan`` and ``topology apply``."""
    parser = subparsers.add_parser(
        "topology",
        help="plan or apply the declared Kafka topics",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    plan_parser = actions.add_parser(
        "plan",
        help="show the difference between the declared topics and the cluster",
        description=_PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.set_handler(plan_parser, _plan)
    apply_parser = actions.add_parser(
        "apply",
        help="create the missing topics; report drift",
        description=_APPLY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.set_handler(apply_parser, _apply)


def _plan(args: argparse.Namespace, settings: Settings) -> int:
    plan = topology.plan(settings)
    lines = [f"+ create {_describe(spec)}" for spec in plan.to_create]
    lines += [f"= {spec.name} in sync" for spec in plan.in_sync]
    lines += _drift_lines(plan)
    if plan.has_drift:
        hint = "; apply never changes existing topics, see the explanations above"
    elif plan.to_create:
        hint = "; run `conveyor topology apply` to create the missing topics"
    else:
        hint = ""
    lines.append(f"plan: {plan.summary()}{hint}")
    _print(lines)
    return common.EXIT_DRIFT if plan.has_drift else common.EXIT_OK


def _apply(args: argparse.Namespace, settings: Settings) -> int:
    result = topology.apply(settings, raise_on_drift=False)
    plan = result.plan
    if not result.created and not plan.has_drift and not plan.to_create:
        _print([f"nothing to change: {len(plan.in_sync)} topics in sync"])
        return common.EXIT_OK
    lines = [f"created {_describe(spec)}" for spec in result.created]
    lines += [f"+ still missing {spec.name}" for spec in plan.to_create]
    lines += _drift_lines(plan)
    summary = f"apply: created {len(result.created)} topic(s); {len(plan.in_sync)} in sync"
    if plan.has_drift:
        summary += (
            f", {len(plan.drifts)} drift(s) remain; apply never changes existing topics, "
            "see the explanations above"
        )
    lines.append(summary)
    _print(lines)
    return common.EXIT_DRIFT if plan.has_drift else common.EXIT_OK


def _describe(spec: topology.TopicSpec) -> str:
    configs = " ".join(f"{key}={value}" for key, value in sorted(spec.configs.items()))
    return f"{spec.name} partitions={spec.partitions} {configs}"


def _drift_lines(plan: topology.Plan) -> list[str]:
    lines: list[str] = []
    for drift in plan.drifts:
        lines.append(
            f"! {drift.topic} drift: {drift.field} is {drift.actual} on the cluster, "
            f"declared {drift.declared}"
        )
        lines += textwrap.wrap(
            drift.explanation, _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT
        )
    lines += [f"  note: {note}" for note in plan.notes]
    return lines


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)
