"""BENCHMARKS.md from a run's results: a table and a chart per scenario, the worker's
per-job CPU budget (from ``python -m bench.profile``), and a closing summary.

Each scenario's section is written by ``bench.sections``; this module puts them in order
after the run's machine and settings, and ends with the summary of every figure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench import budget
from bench.sections import RENDERERS, TITLES, ms
from conveyor.topology.model import PRIORITIES

_INTRO = """\
# Benchmarks

Measured side by side in one run on one machine by `python -m bench` (see `bench/`).
Every scenario starts its own workers against its own topics and Postgres schema; the
broker, Postgres and the registry are the ones the tests use: Apache Kafka (KRaft, one
node, started from Maven-resolved jars) unless `CONVEYOR_KAFKA_BOOTSTRAP` names a broker,
and Tansu only where Java is missing; the run below says which. These are figures, not
pass/fail checks: re-run them on your hardware with `python -m bench` (a full run) or
`python -m bench --quick` (a smoke run whose figures mean nothing).
"""


def render(
    result: dict[str, Any],
    *,
    charts: Mapping[str, str] | None = None,
    profile: dict[str, Any] | None = None,
) -> str:
    """The whole of BENCHMARKS.md for one run's result.

    Args:
        result: What ``python -m bench`` measured.
        charts: Chart files by scenario name, as paths relative to the Markdown file.
        profile: What ``python -m bench.profile`` measured, for the CPU budget section.
    """
    charts = charts or {}
    meta = result["meta"]
    scenarios = result["scenarios"]
    parts = [_INTRO, _run_section(meta)]
    for name, render_one in RENDERERS.items():
        if name not in scenarios:
            continue
        scenario = scenarios[name]
        if "error" in scenario:
            parts.append(f"## {TITLES[name]}\n\nFailed in this run: `{scenario['error']}`\n")
        else:
            parts.append(render_one(scenario))
            if name in charts:
                parts.append(f"![{TITLES[name]}]({charts[name]})\n")
    if profile is not None:
        parts.append(budget.render(profile))
    parts.append(_summary(scenarios))
    return "\n".join(parts)


def _run_section(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    services = ", ".join(f"{k}: {v}" for k, v in meta["services"].items())
    sizes = ", ".join(f"{k}={v}" for k, v in meta["sizes"].items())
    lines = [
        "## This run\n",
        f"- Date: {meta['date']} ({'quick smoke run' if meta['quick'] else 'full run'}, "
        f"{meta['duration_s']:.0f} s in all)",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
        f"Linux {m['kernel']}, load average {', '.join(str(x) for x in m['load_average'])} "
        "at the start",
        f"- Versions: {versions}",
        f"- Services: {services}",
        f"- Settings: {sizes}",
        f"- Broker: **{_broker_name(meta)}**",
        "- Worker settings: `WorkerOptions(session_timeout_ms=6000, heartbeat_interval_ms=1000,"
        f" fetch_max_wait_ms={meta.get('fetch_max_wait_ms', 'worker default')})`"
        " (Tansu holds an empty fetch for the whole wait, where Kafka answers when a record"
        " arrives, so a Tansu run sets 20 ms), relay, DLQ sink and purge off, the ledger on"
        " (as by default), `/metrics` served on a free port; everything else default",
    ]
    if meta.get("note"):
        lines.append(f"- Note: {meta['note']}")
    return "\n".join(lines) + "\n"


def _broker_name(meta: dict[str, Any]) -> str:
    origin = meta.get("services", {}).get("kafka", "")
    if meta.get("broker") == "tansu":
        return f"Tansu ({origin})"
    return f"Apache Kafka ({origin})" if origin else "Apache Kafka"


def _keys_summary(keys: dict[str, Any]) -> str:
    series = ", ".join(
        f"{x['keys']:,} key{'s' if x['keys'] > 1 else ''} {x['jobs_per_s']:,.0f}/s"
        for x in keys["conveyor"]["series"]
    )
    live = keys.get("conveyor_live")
    if live:
        series += "; submitted while the worker ran: " + ", ".join(
            f"{x['keys']:,} {x['jobs_per_s']:,.0f}/s" for x in live["series"]
        )
    return f"- Key concurrency on 2 partitions, a backlog: {series}."


def _summary(scenarios: dict[str, Any]) -> str:
    lines = ["## Summary\n"]
    tp = scenarios.get("throughput", {})
    if "ratios" in tp:
        lines.append(_throughput_summary(tp))
    lat = scenarios.get("latency", {}).get("contenders", {})
    for name, figures in lat.items():
        if "lone" in figures:
            lines.append(
                f"- A lone job on an idle {name} worker: submit-to-start p50/p95/p99"
                f" {ms(figures['lone']['submit_to_start'])} ms."
            )
        for step in figures.get("steps", []):
            a, b = step["submit_to_start"], step["submit_to_complete"]
            lines.append(
                f"- Latency, {name} at {step['rate']:,.0f}/s: submit-to-start p50/p95/p99"
                f" {ms(a)} ms, submit-to-complete {ms(b)} ms."
            )
    prio = scenarios.get("priority", {}).get("contenders", {}).get("conveyor")
    if prio:
        shares = "/".join(f"{prio['priorities'][p]['share_pct']:g}" for p in PRIORITIES)
        lines.append(f"- Priority shares critical/high/normal/low: {shares}% (design 40/30/20/10).")
    sched = scenarios.get("scheduling", {}).get("contenders", {}).get("conveyor")
    if sched:
        lines.append(
            f"- Scheduled jobs: release lateness p50/p95/p99 {ms(sched['release_lateness_ms'])}"
            f" ms, {sched['within_1s_pct']:g}% within 1 s."
        )
    keys = scenarios.get("keys", {}).get("contenders", {})
    if "conveyor" in keys:
        lines.append(_keys_summary(keys))
    mem = scenarios.get("memory", {}).get("contenders", {}).get("conveyor")
    if mem:
        backlog = scenarios["memory"]["params"]["backlog"]
        text = (
            f"- Memory: with a {backlog:,}-job backlog the worker's peak RSS was"
            f" {mem['peak_rss_mb']:g} MB (mean {mem['rss_mb_mean_first_half']:g} MB over the"
            f" first half of the run, {mem['rss_mb_mean_second_half']:g} MB over the second)"
        )
        if "ratios" in tp:
            small = tp["params"]["jobs"]
            text += (
                f"; with a {small:,}-job backlog (throughput) it peaked at"
                f" {tp['contenders']['conveyor']['peak_rss_mb']:g} MB"
            )
        lines.append(text + ".")
    scale = scenarios.get("scaling", {}).get("contenders", {}).get("conveyor")
    if scale:
        steps = ", ".join(
            f"{x['processes']} process{'es' if x['processes'] > 1 else ''} {x['jobs_per_s']:,.0f}/s"
            for x in scale["series"]
        )
        lines.append(f"- Scaling on one 8-partition topic: {steps}.")
    vis = scenarios.get("visibility", {})
    if "contenders" in vis:
        c = vis["contenders"]["conveyor"]
        lines.append(
            f"- Visible as queued at {vis['params']['rate']:,.0f} jobs/s offered:"
            f" submit-to-visible p50/p95/p99 {ms(c['ledger']['submit_to_visible'])} ms"
            f" (ledger alone), {ms(c['in_worker']['submit_to_visible'])} ms (ledger in a"
            f" worker far behind); the ledger records a backlog at"
            f" {c['catch_up']['jobs_per_s']:,.0f} jobs/s for"
            f" {c['catch_up']['cpu_s_per_1000']:g} CPU s per 1,000 jobs."
        )
    return "\n".join(lines) + "\n"


def _throughput_summary(tp: dict[str, Any]) -> str:
    c = tp["contenders"]
    ratios = tp["ratios"]
    text = f"- Throughput: conveyor {c['conveyor']['jobs_per_s']:,.0f} jobs/s with durable status"
    if "conveyor_to_raw_durable" in ratios:
        text += (
            f", **{ratios['conveyor_to_raw_durable']:.3g}x the raw durable loop**"
            f" ({c['raw_durable']['jobs_per_s']:,.0f}/s)"
        )
    names = {"raw": "the raw loop", "celery": "Celery/Redis", "dramatiq": "Dramatiq/Redis"}
    others = [
        f"{ratios[f'conveyor_to_{name}']:.3g}x {label} ({c[name]['jobs_per_s']:,.0f}/s)"
        for name, label in names.items()
        if f"conveyor_to_{name}" in ratios
    ]
    if others:
        text += "; " + ", ".join(others)
    text += "."
    several = c.get("conveyor_processes")
    if several and "jobs_per_s" in several:
        text += (
            f" With `--processes {several['processes']}`: {several['jobs_per_s']:,.0f} jobs/s, "
            + ", ".join(
                f"{ratios[key]:.3g}x {label}"
                for name, label in {"raw_durable": "the raw durable loop", **names}.items()
                if (key := f"conveyor_processes_to_{name}") in ratios
            )
            + "."
        )
    return text
