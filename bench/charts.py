"""PNG charts of a run's results, embedded in BENCHMARKS.md by ``bench.report``.

One chart per question people ask at a glance: how fast is each contender
(``throughput.png``), how long does a job wait at each offered rate (``latency.png``),
do the priorities get their shares under overload (``priority.png``), and does the rate
grow with distinct keys (``keys.png``); ``scaling.png`` when the scaling scenario ran.
Charts are drawn on bare ``matplotlib.figure.Figure`` objects, which save through the Agg
canvas, so no display and no pyplot state are involved; a scenario that failed or did
not run gets no chart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from conveyor.topology.model import PRIORITIES, PRIORITY_WEIGHTS

#: Display names and colours, one per contender, the same in every chart.
CONTENDERS = {
    "raw": ("raw loop (no status)", "#9e9e9e"),
    "raw_durable": ("raw durable loop", "#616161"),
    "conveyor": ("conveyor", "#1565c0"),
    "conveyor_processes": ("conveyor, N processes", "#0d47a1"),
    "conveyor_live": ("conveyor, submitted while running", "#90a4ae"),
    "celery": ("Celery / Redis", "#2e7d32"),
    "dramatiq": ("Dramatiq / Redis", "#ef6c00"),
}
PRIORITY_COLOURS = {"critical": "#c62828", "high": "#ef6c00", "normal": "#1565c0", "low": "#78909c"}
_DPI = 110


def write_all(result: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Draws every chart the run has data for into ``directory``.

    Returns:
        The chart files by scenario name.
    """
    scenarios = result["scenarios"]
    drawers: dict[str, Callable[[dict[str, Any]], Figure]] = {
        "throughput": throughput,
        "latency": latency,
        "priority": priority,
        "keys": keys,
        "scaling": scaling,
    }
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, draw in drawers.items():
        scenario = scenarios.get(name)
        if not scenario or "error" in scenario:
            continue
        figure = draw(scenario)
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=_DPI)
        written[name] = path
    return written


def _ran(figures: dict[str, Any]) -> bool:
    return "skipped" not in figures and "error" not in figures


def throughput(s: dict[str, Any]) -> Figure:
    """Horizontal bars of jobs/s per contender, on a log scale, labelled with the value."""
    c = s["contenders"]
    names = [n for n in CONTENDERS if n in c and _ran(c[n])]
    rates = [float(c[n]["jobs_per_s"]) for n in names]
    figure = Figure(figsize=(8, 0.6 * len(names) + 1.6), layout="constrained")
    ax = figure.subplots()
    labels = [
        f"conveyor, {c[n]['processes']} processes"
        if n == "conveyor_processes"
        else CONTENDERS[n][0]
        for n in names
    ]
    bars = ax.barh(labels, rates, color=[CONTENDERS[n][1] for n in names])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 2, max(rates) * 6)
    ax.bar_label(bars, labels=[f" {r:,.0f}/s" for r in rates], padding=2)
    ax.set_xlabel("jobs per second (log scale)")
    p = s["params"]
    ax.set_title(f"Throughput: {p['jobs']:,} no-op jobs, durable status")
    ax.grid(axis="x", which="both", alpha=0.3)
    return figure


def latency(s: dict[str, Any]) -> Figure:
    """Submit-to-start p50, p95 and p99 against the offered rate, one line per contender."""
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    axes = figure.subplots(1, 3, sharey=True)
    for ax, percentile in zip(axes, ("p50", "p95", "p99"), strict=True):
        for name, figures in s["contenders"].items():
            if not _ran(figures) or not figures.get("steps"):
                continue
            steps = sorted(figures["steps"], key=lambda step: step["rate"])
            label, colour = CONTENDERS.get(name, (name, None))
            ax.plot(
                [step["rate"] for step in steps],
                [max(step["submit_to_start"][percentile], 0.01) for step in steps],
                marker="o",
                label=label,
                color=colour,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        rates = sorted({x["rate"] for f in s["contenders"].values() for x in f.get("steps", [])})
        ax.set_xticks(rates, [f"{r:,.0f}" for r in rates])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"submit to start, {percentile}")
        ax.set_xlabel("jobs/s offered")
        ax.grid(which="both", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale)")
    axes[0].legend()
    figure.suptitle("Latency at a fixed submit rate")
    return figure


def priority(s: dict[str, Any]) -> Figure:
    """Stacked shares of the jobs started in each time slice, with the design's 4:3:2:1."""
    c = s["contenders"]["conveyor"]
    series = c.get("over_time")
    figure = Figure(figsize=(9, 4), layout="constrained")
    ax = figure.subplots()
    if not series:
        ax.text(0.5, 0.5, "no time series in this run", ha="center", transform=ax.transAxes)
        return figure
    width = float(series["bucket_s"])
    started = series["started"]
    slices = len(started[PRIORITIES[0]])
    totals = [sum(started[p][i] for p in PRIORITIES) or 1 for i in range(slices)]
    # Slice edges; each slice's share is drawn flat across it, so the last one is repeated.
    edges = [i * width for i in range(slices + 1)]
    shares = [[100 * started[p][i] / totals[i] for i in range(slices)] for p in PRIORITIES]
    ax.stackplot(
        edges,
        [row + row[-1:] for row in shares],
        labels=list(PRIORITIES),
        colors=[PRIORITY_COLOURS[p] for p in PRIORITIES],
        alpha=0.85,
        step="post",
    )
    _design_lines(ax)
    ax.set_xlim(0, slices * width)
    ax.set_ylim(0, 100)
    ax.set_xlabel("seconds since the worker's first job")
    ax.set_ylabel("% of jobs started in the slice (stacked)")
    p = s["params"]
    ax.set_title(
        f"Priority shares over time: {p['backlog_per_priority']:,} jobs backlogged per priority,"
        f" concurrency {p['concurrency']}"
    )
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1))
    labels.append("design 40/30/20/10")
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def _design_lines(ax: Axes) -> None:
    """Dashed lines where the stack's boundaries would sit at exactly 4:3:2:1."""
    total = sum(PRIORITY_WEIGHTS.values())
    level = 0.0
    for p in PRIORITIES[:-1]:
        level += 100 * PRIORITY_WEIGHTS[p] / total
        ax.axhline(level, color="black", linestyle="--", linewidth=1)


def keys(s: dict[str, Any]) -> Figure:
    """Jobs/s against distinct keys (log-log), with the ideal min(keys, concurrency)/t."""
    series = s["contenders"]["conveyor"]["series"]
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    counts = [x["keys"] for x in series]
    ax.plot(
        counts,
        [x["jobs_per_s"] for x in series],
        marker="o",
        label="conveyor, a backlog",
        color=CONTENDERS["conveyor"][1],
    )
    live = s["contenders"].get("conveyor_live")
    if live:
        ax.plot(
            [x["keys"] for x in live["series"]],
            [x["jobs_per_s"] for x in live["series"]],
            marker="s",
            label=CONTENDERS["conveyor_live"][0],
            color=CONTENDERS["conveyor_live"][1],
        )
    ax.plot(
        counts,
        [x["ideal_jobs_per_s"] for x in series],
        linestyle="--",
        color="black",
        label="ideal",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distinct keys")
    ax.set_ylabel("jobs per second")
    p = s["params"]
    ax.set_title(
        f"Key concurrency: {p['partitions']} partitions, {p['handler_ms']:g} ms handler,"
        f" concurrency {p['concurrency']}"
    )
    ax.grid(which="both", alpha=0.3)
    ax.legend()
    return figure


def scaling(s: dict[str, Any]) -> Figure:
    """Jobs/s against worker processes, with linear scaling from one process dashed."""
    series = s["contenders"]["conveyor"]["series"]
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    processes = [x["processes"] for x in series]
    rates = [x["jobs_per_s"] for x in series]
    ax.plot(processes, rates, marker="o", color=CONTENDERS["conveyor"][1], label="conveyor")
    if rates:
        ax.plot(
            processes,
            [rates[0] * n / processes[0] for n in processes],
            linestyle="--",
            color="black",
            label="linear from 1 process",
        )
    ax.set_xticks(processes)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("jobs per second")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Scaling on one {s['params']['partitions']}-partition topic")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure
