"""The worker's per-job CPU budget: py-spy's sampled stacks sorted into stages.

``python -m bench.profile`` records the worker with ``py-spy record --format raw``: one
line per distinct stack, ``frame;frame;...;frame COUNT``, root first, each frame
``function (file:line)``. :func:`classify` gives every stack one stage:

1. The deepest frame of conveyor's own code (or of the bench's handler) that a
   :data:`PROJECT_RULES` entry names decides, so a library call is charged to the
   conveyor code that made it: aiokafka under ``Committer.commit_now`` is commit, under
   ``ConsumerLoop._fetch`` fetch.
2. Except that a library of one purpose called below it overrides it
   (:data:`OVERRIDES`): prometheus_client and OpenTelemetry are metrics and tracing,
   fastavro and the registry's deserializer decode, asyncpg status writes.
3. A stack with no such frame is charged by the libraries in it
   (:data:`LIBRARY_RULES`, the first rule any frame matches): asyncpg's pool resets and
   protocol callbacks are status writes, aiokafka's group coordinator commit, its
   background fetcher fetch, and the rest of asyncio (socket reads whose protocol is
   compiled code py-spy cannot see, task switches, the selector) the event loop.

:func:`budget` shares the worker's CPU seconds out by samples, per job.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

FETCH = "fetch"
DECODE = "decode"
MAILBOX = "mailbox and scheduler"
STATUS = "status writes"
HANDLER = "handler call"
OBSERVABILITY = "metrics, tracing and log fields"
COMMIT = "commit and offset tracking"
RUNNER = "job runner (per-job orchestration)"
LOOP = "asyncio event loop and task switches"
OTHER = "other"
#: Stages in the order the budget lists them (a job's path through the worker).
STAGES = (FETCH, DECODE, MAILBOX, STATUS, HANDLER, OBSERVABILITY, COMMIT, RUNNER, LOOP, OTHER)
#: Samples of a thread blocked in a wait: not a stage, and not charged any CPU.
WAITING = "waiting"

#: ``(function, path fragment)`` of leaf frames that block in compiled code with the GIL
#: released: the loop's selector, and the poll threads of the two librdkafka producers
#: (inside ``Producer.poll``, which py-spy cannot see). py-spy's ``--nonblocking`` mode
#: samples them as running; their threads' CPU (``/proc``) is a few percent of the
#: process's, against 10-15% of the samples.
WAITING_LEAVES: tuple[tuple[str, str], ...] = (
    ("EpollSelector.select", "/selectors.py"),
    ("DeliveryCore._poll_loop", "/conveyor/producer/delivery.py"),
    ("Republisher._poll", "/conveyor/consumer/republish.py"),
)

_RUNTIME = "/conveyor/consumer/runtime.py"

#: ``(stage, path fragment, function name or None for any)`` for conveyor's own frames.
PROJECT_RULES: tuple[tuple[str, str, str | None], ...] = (
    (OBSERVABILITY, "/conveyor/observability/", None),
    (DECODE, "/conveyor/schemas/", None),
    (DECODE, "/conveyor/consumer/job.py", None),
    (DECODE, "/conveyor/consumer/intake.py", None),
    (HANDLER, "/bench/apps.py", None),
    (HANDLER, "/conveyor/consumer/handlers.py", None),
    (HANDLER, "/conveyor/consumer/context.py", None),
    (STATUS, "/conveyor/consumer/status.py", None),
    (STATUS, "/conveyor/consumer/claims.py", None),
    (STATUS, "/conveyor/consumer/batching.py", None),
    (STATUS, "/conveyor/consumer/unclaimed.py", None),
    (STATUS, "/conveyor/db.py", None),
    (COMMIT, "/conveyor/consumer/offsets.py", None),
    (COMMIT, "/conveyor/consumer/commits.py", None),
    (MAILBOX, "/conveyor/consumer/mailbox.py", None),
    (MAILBOX, "/conveyor/consumer/scheduler.py", None),
    (MAILBOX, _RUNTIME, "ConsumerLoop._dispatch"),
    (MAILBOX, _RUNTIME, "ConsumerLoop._maybe_resume"),
    (FETCH, _RUNTIME, "ConsumerLoop._fetch"),
    (RUNNER, "/conveyor/consumer/execution.py", None),
    (RUNNER, "/conveyor/consumer/claimed.py", None),
    (RUNNER, _RUNTIME, "ConsumerLoop._execute"),
    (RUNNER, "/conveyor/consumer/deadlines.py", None),
    (RUNNER, "/conveyor/consumer/recording.py", None),
)

#: Libraries of one purpose: below a project frame they take the stack over.
OVERRIDES: tuple[tuple[str, str], ...] = (
    (OBSERVABILITY, "/prometheus_client/"),
    (OBSERVABILITY, "/opentelemetry/"),
    (DECODE, "/fastavro/"),
    (DECODE, "/confluent_kafka/schema_registry/"),
    (STATUS, "/asyncpg/"),
)

#: For stacks with no project frame: the first rule any frame matches decides. The
#: group coordinator commits offsets (and heartbeats); the rest of aiokafka fetches.
LIBRARY_RULES: tuple[tuple[str, str], ...] = (
    *OVERRIDES,
    (COMMIT, "/aiokafka/consumer/group_coordinator.py"),
    (FETCH, "/aiokafka/"),
    (LOOP, "/asyncio/"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def frames(stack: str) -> list[tuple[str, str]]:
    """``(function, file)`` of each frame of one collapsed stack, root first."""
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        out.append((match["function"], match["file"]) if match else (frame, ""))
    return out


def stage_of(stack: Sequence[tuple[str, str]]) -> str:
    """The stage one sampled stack (root first) is charged to, or :data:`WAITING`."""
    if stack and any(
        stack[-1][0] == function and fragment in stack[-1][1]
        for function, fragment in WAITING_LEAVES
    ):
        return WAITING
    for depth in range(len(stack) - 1, -1, -1):
        function, file = stack[depth]
        stage = _project_stage(function, file)
        if stage is None:
            continue
        for _, below in stack[depth + 1 :]:
            for override, fragment in OVERRIDES:
                if fragment in below:
                    return override
        return stage
    for stage, fragment in LIBRARY_RULES:
        if any(fragment in file for _, file in stack):
            return stage
    return OTHER


def _project_stage(function: str, file: str) -> str | None:
    for stage, fragment, name in PROJECT_RULES:
        if fragment in file and (name is None or function == name):
            return stage
    return None


def classify(collapsed: str) -> dict[str, Any]:
    """Samples per stage, the busiest leaf functions, and conveyor frames no rule names.

    The last are the deepest conveyor frames of stacks left to the event loop or
    ``other``: after a rename in the worker, they say which rule to update.
    """
    per_stage: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    unnamed: Counter[str] = Counter()
    where: dict[str, Counter[str]] = {stage: Counter() for stage in (*STAGES, WAITING)}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parsed = frames(stack)
        stage = stage_of(parsed)
        per_stage[stage] += int(count)
        where[stage][_owner(parsed)] += int(count)
        function, file = parsed[-1]
        leaves[f"{function} ({_short(file)})"] += int(count)
        if stage in (LOOP, OTHER):
            own = [(f, path) for f, path in _below_loop(parsed) if "/conveyor/" in path]
            if own:
                unnamed[f"{own[-1][0]} ({_short(own[-1][1])})"] += int(count)
    return {
        "samples": dict(per_stage),
        "top_leaves": leaves.most_common(15),
        "unnamed_conveyor_frames": unnamed.most_common(10),
        "where": {stage: counter.most_common(3) for stage, counter in where.items() if counter},
    }


def _owner(stack: Sequence[tuple[str, str]]) -> str:
    """The function a stack is "in": its deepest conveyor frame below the event loop, or
    else the first frame of the loop's callback, or else its leaf."""
    below = _below_loop(stack)
    own = [function for function, file in below if "/conveyor/" in file or "/bench/" in file]
    if own:
        return own[-1]
    return below[0][0] if below else stack[-1][0] if stack else "?"


def _below_loop(stack: Sequence[tuple[str, str]]) -> Sequence[tuple[str, str]]:
    """The frames a callback of the event loop runs (all of them in another thread)."""
    for depth, (function, file) in enumerate(stack):
        if function == "Handle._run" and "/asyncio/" in file:
            return stack[depth + 1 :]
    if any(function == "Worker.run_sync" for function, _ in stack):
        return ()  # the loop itself, between callbacks
    return stack


def _short(file: str) -> str:
    for marker in ("site-packages/", "/conveyor/", "/bench/", "/lib/python3"):
        if marker in file:
            head = "" if marker == "site-packages/" else marker.strip("/") + "/"
            if marker == "/lib/python3":
                return "stdlib " + file.rsplit("/", 1)[-1]
            return head + file.split(marker, 1)[1]
    return file


def budget(stages: dict[str, Any], *, cpu_s: float, jobs: int) -> dict[str, Any]:
    """Each stage's share of the samples and its CPU microseconds per job.

    Args:
        stages: What :func:`classify` returned.
        cpu_s: The worker's CPU seconds over the recording.
        jobs: Jobs completed over the recording.
    """
    samples: dict[str, int] = stages["samples"]
    waiting = samples.get(WAITING, 0)
    total = sum(samples.values()) - waiting
    rows = []
    for stage in STAGES:
        n = samples.get(stage, 0)
        share = n / total if total else 0.0
        per_job = share * cpu_s / jobs * 1e6 if jobs else 0.0
        rows.append(
            {
                "stage": stage,
                "samples": n,
                "share": round(share, 4),
                "us_per_job": round(per_job, 1),
            }
        )
    return {
        "samples": total,
        "waiting_samples": waiting,
        "us_per_job": round(cpu_s / jobs * 1e6, 1) if jobs else 0.0,
        "stages": rows,
        "top_leaves": stages["top_leaves"],
        "unnamed_conveyor_frames": stages.get("unnamed_conveyor_frames", []),
        "where": stages.get("where", {}),
    }


def render(profile: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of one ``python -m bench.profile`` result."""
    meta = profile["meta"]
    lines = [
        "## Per-job CPU budget of the worker (py-spy)\n",
        f"Measured by `python -m bench.profile` on {meta['date']} ({meta['broker']}):"
        f" a {meta['backlog']:,}-job no-op backlog, one worker (concurrency"
        f" {meta['concurrency']}), sampled by py-spy at {meta['rate']}/s without pausing it"
        f" while it completed {meta['jobs']:,} jobs in {meta['seconds']:.1f} s using"
        f" {meta['cpu_s']:.2f} CPU s: **{profile['us_per_job']:,.0f} µs of CPU per job**"
        f" ({meta['jobs'] / meta['seconds']:,.0f} jobs/s under the profiler). Each sampled stack"
        " is charged to one stage by `bench/budget.py` (the deepest conveyor frame decides;"
        " metrics, tracing, decoding and asyncpg libraries below it take the stack over), and"
        " the CPU seconds are shared out by samples."
        f" {profile.get('waiting_samples', 0):,} samples of threads blocked in a wait (the"
        " loop's selector, the librdkafka producers' poll threads; see"
        " `budget.WAITING_LEAVES`) are left out of the shares. py-spy counts a thread that"
        " waits for a CPU as busy, so on a loaded machine (load average"
        f" {', '.join(str(x) for x in meta['machine']['load_average'])} at the start of this"
        f" one, {meta['machine']['cpus']} CPUs) the shares are steadier than the absolute"
        " figures.\n",
        "| stage | share of samples % | CPU µs per job | mostly in (share of the stage) |",
        "|---|---|---|---|",
    ]
    where = profile.get("where", {})
    for row in profile["stages"]:
        top = ", ".join(
            f"`{name}` {100 * n / row['samples']:.0f}%"
            for name, n in where.get(row["stage"], [])
            if row["samples"]
        )
        lines.append(
            f"| {row['stage']} | {100 * row['share']:.1f} | {row['us_per_job']:,.1f} | {top} |"
        )
    lines.append(f"| **all** | 100 | **{profile['us_per_job']:,.1f}** | |")
    lines.append("\nBusiest leaf functions (samples):\n")
    lines += [f"- `{name}`: {count:,}" for name, count in profile["top_leaves"][:10]]
    unnamed = profile.get("unnamed_conveyor_frames") or []
    if unnamed:
        lines.append(
            "\nconveyor frames that no rule of `bench/budget.py` names (their samples count as"
            " event loop or other; name them there if they are a stage):\n"
        )
        lines += [f"- `{name}`: {count:,}" for name, count in unnamed[:5]]
    return "\n".join(lines) + "\n"
