"""One Markdown section per benchmark scenario: its title, how it was measured, its table.

``bench.report`` puts the sections of :data:`RENDERERS` into BENCHMARKS.md in that order,
under the headings of :data:`TITLES`; :func:`ms` writes percentiles the same way in every
section and in the report's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from conveyor.topology.model import PRIORITIES

TITLES = {
    "throughput": "1. Throughput (no-op handler, durable status)",
    "latency": "2. Latency at a fixed submit rate",
    "priority": "3. Priority under overload",
    "keys": "4. Key concurrency (2 partitions, 10 ms handler)",
    "memory": "5. Memory with a large backlog",
    "scaling": "6. Scaling with worker processes (one 8-partition topic)",
    "ui": "7. Web UI pages on big tables",
    "scheduling": "8. Scheduled jobs (run_at), released by the scheduler",
    "visibility": "9. Visible as queued: the ledger",
}
"""Each scenario's section heading, by scenario name."""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _throughput(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]
    durable_rate = c.get("raw_durable", {}).get("jobs_per_s") or 0
    celery_rate = c["celery"].get("jobs_per_s") or 0
    labels = {
        "raw": "raw confluent-kafka consume + commit loop (no status)",
        "raw_durable": "raw durable loop: decode, one status statement per fetch, commit",
        "conveyor": f"conveyor worker (concurrency {p['conveyor_concurrency']}, ledger on)",
        "conveyor_processes": (
            f"conveyor worker --processes {c.get('conveyor_processes', {}).get('processes')}"
            f" (concurrency {p['conveyor_concurrency']} each, a ledger each)"
        ),
        "celery": f"Celery on Redis, acks_late ({c['celery'].get('pool', '')})",
        "dramatiq": f"Dramatiq on Redis ({c.get('dramatiq', {}).get('pool', '')})",
    }
    rows = []
    for name, label in labels.items():
        f = c.get(name)
        if f is None:
            continue
        if "skipped" in f:
            rows.append([label, f"skipped: {f['skipped']}", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                label,
                f["jobs_per_s"],
                _ratio(f["jobs_per_s"], durable_rate),
                _ratio(f["jobs_per_s"], celery_rate),
                f["cpu_s_per_1000"],
                f["peak_rss_mb"],
                f["wall_s"],
                f"{f['machine_busy_pct']:.0f}",
            ]
        )
    header = [
        "contender",
        "jobs/s",
        "x raw durable",
        "x Celery",
        "CPU s / 1,000 jobs",
        "peak RSS MB",
        "wall s (with start-up)",
        "machine CPU busy %",
    ]
    return (
        f"## {TITLES['throughput']}\n\n"
        f"{p['jobs']:,} jobs preloaded on one `{p['priority']}` topic ({p['partitions']} "
        f"partitions, {p['keys']:,} distinct keys; submitted at {p['preload_jobs_per_s']:,.0f}"
        " jobs/s), then one worker process; conveyor runs a second time with `--processes`"
        " over a fresh copy of the backlog (Celery and Dramatiq run two processes too). Jobs/s"
        " count from the first job started to the last"
        " one complete (conveyor and the raw durable loop: `state = 'complete'` in Postgres;"
        " Celery and Dramatiq: the task's record in Redis; raw loop: first to last commit). CPU"
        " and RSS are of the worker's process tree; machine CPU busy is all CPUs over the same"
        " time (database, broker and anything else on the machine included).\n\n"
        "The raw loop does no work per job (no decoding, no database): it is the broker's"
        " delivery rate to one Python process. The raw durable loop (`bench/rawdurable.py`) is"
        " the ceiling with durable status: it decodes each envelope with fastavro and writes,"
        " in one statement per fetch of up to 500, the rows conveyor writes (the `jobs` row"
        " complete, and its queued, processing and complete transitions) into a schema of its"
        " own, migrated like conveyor's (its notify triggers fire too), then commits the"
        " offsets; it runs no handler and takes no lease. conveyor /"
        " raw durable is the share of that ceiling conveyor's per-job work leaves. The conveyor"
        " worker runs its ledger in a child process, as a worker does by default, so its"
        " figure includes the ledger's `queued` rows (and completions that update those rows)"
        " while the raw durable loop writes each row once, and its CPU and RSS include the"
        " child's.\n\n" + _table(header, rows)
    )


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.3g}" if base else ""


def _latency(s: dict[str, Any]) -> str:
    p = s["params"]
    rows = []
    for name, figures in s["contenders"].items():
        if "skipped" in figures:
            rows.append([name, f"skipped: {figures['skipped']}", *[""] * 7])
            continue
        lone = [{**figures["lone"], "rate": "one at a time, idle"}] if "lone" in figures else []
        for step in lone + figures["steps"]:
            start, done = step["submit_to_start"], step["submit_to_complete"]
            rows.append(
                [
                    name,
                    step["rate"],
                    step["jobs"],
                    start["p50"],
                    start["p95"],
                    start["p99"],
                    done["p50"],
                    done["p95"],
                    done["p99"],
                ]
            )
    header = ["contender", "jobs/s offered", "jobs", "start p50 ms", "start p95 ms"]
    header += ["start p99 ms", "complete p50 ms", "complete p95 ms", "complete p99 ms"]
    half = " and half of conveyor's measured maximum" if p["half_of_measured_max"] else ""
    return (
        f"## {TITLES['latency']}\n\n"
        f"No-op jobs submitted one by one for {p['seconds_per_rate']:.0f} s at each rate (the"
        f" fixed rates{half}) to a running worker; times from submit to the handler's start"
        ' and to the recorded completion. First, "one at a time, idle":'
        f" {p.get('lone_jobs', 0)} jobs, each submitted {p.get('lone_gap_s', 0):g} s after"
        " the one before finished, to a worker with nothing else to do.\n\n" + _table(header, rows)
    )


def _priority(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]["conveyor"]
    rows = [
        [
            name,
            c["priorities"][name]["share_pct"],
            c["priorities"][name]["expected_pct"],
            c["priorities"][name]["median_wait_s"],
        ]
        for name in PRIORITIES
    ]
    return (
        f"## {TITLES['priority']}\n\n"
        f"{p['backlog_per_priority']:,} jobs preloaded in each priority, a handler awaiting"
        f" {p['handler_ms']:g} ms, one worker with concurrency {p['concurrency']}. Shares are of"
        f" the {c['window_jobs']:,} jobs started while all four priorities still had jobs"
        f" waiting ({c['window_s']:.1f} s); waits are from the worker's first job.\n\n"
        + _table(["priority", "share %", "expected %", "median wait s"], rows)
    )


def _keys(s: dict[str, Any]) -> str:
    p = s["params"]
    contenders = s["contenders"]
    series = contenders["conveyor"]["series"]
    live = contenders.get("conveyor_live")
    headers = ["distinct keys", "jobs", "jobs/s, a backlog", "ideal jobs/s"]
    rows = [[x["keys"], x["jobs"], x["jobs_per_s"], x["ideal_jobs_per_s"]] for x in series]
    text = (
        f"## {TITLES['keys']}\n\n"
        f"One worker (concurrency {p['concurrency']}) on a topic of {p['partitions']}"
        f" partitions; each job awaits {p['handler_ms']:g} ms; jobs of one key run one at a"
        " time. Ideal is min(keys, concurrency) / handler time. Each step's jobs are"
        " submitted first and a worker is then started on them (its ledger child records"
        " them meanwhile, so that cost counts); times run from the first job started to the"
        " last finished."
    )
    if live:
        by_keys = {x["keys"]: x["jobs_per_s"] for x in live["series"]}
        headers.insert(3, "jobs/s, submitted while running")
        for row in rows:
            row.insert(3, by_keys.get(row[0], "-"))
        text += (
            " The series ran again with one worker running through every step and each"
            " step's jobs submitted while it ran: the bench's producer then shares the"
            " machine's CPUs with the worker, the broker and Postgres."
        )
    return text + "\n\n" + _table(headers, rows)


def _memory(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]["conveyor"]
    row = [
        p["backlog"],
        p["seconds"],
        c["jobs_done"],
        c["rss_mb_first_job"],
        c["rss_mb_end"],
        c["rss_mb_mean_first_half"],
        c["rss_mb_mean_second_half"],
        c["peak_rss_mb"],
        c.get("worker_peak_rss_mb", ""),
    ]
    header = ["backlog", "seconds run", "jobs done", "RSS MB at first job", "RSS MB at end"]
    header += ["mean RSS MB, first half", "mean RSS MB, second half", "peak RSS MB"]
    header += ["peak RSS MB, worker process alone"]
    return (
        f"## {TITLES['memory']}\n\n"
        f"{p['backlog']:,} jobs preloaded (at {p['preload_jobs_per_s']:,.0f} jobs/s), then one"
        f" worker (concurrency {p['concurrency']}) runs for {p['seconds']:.0f} s while its RSS"
        " is read every second. RSS is of the process tree (the worker and its ledger child)"
        " except in the last column.\n\n" + _table(header, [row])
    )


def _ui(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]["conveyor"]
    rows = [[page, f["p50_ms"], f["p95_ms"]] for page, f in c["pages"].items()]
    verdict = (
        "every page" if c["all_within_goal"] else f"not every page (slowest: {c['slowest_page']})"
    )
    return (
        f"## {TITLES['ui']}\n\n"
        f"{p['jobs']:,} job rows and {p['dlq_rows']:,} DLQ rows, each page fetched"
        f" {p['repeats']} times over HTTP from `conveyor ui`: {verdict} within 300 ms"
        f" (slowest p95 {c['slowest_p95_ms']:.1f} ms).\n\n"
        + _table(["page", "p50 ms", "p95 ms"], rows)
    )


def _scheduling(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]["conveyor"]
    plain = c.get("plain_cpu_s_per_1000")
    rows = [
        ["release (due to acked release)", ms(c["release_lateness_ms"])],
        ["start (due to handler start)", ms(c["start_lateness_ms"])],
    ]
    return (
        f"## {TITLES['scheduling']}\n\n"
        f"{p['jobs']:,} jobs, each with its own `run_at`, due uniformly over {p['window_s']:g} s"
        f" ({p['rate_per_s']:g} a second) starting {p['lead_s']:g} s after the first submit,"
        " released by the scheduler inside one `conveyor worker` (concurrency"
        f" {p['concurrency']}). The issue's load is 100,000 jobs over an hour; this compresses"
        f" it. {c['within_1s_pct']:g}% were released within 1 s of their time, {c['early']}"
        " early. The worker process spent"
        f" {c['cpu_s_per_1000']:.3f} CPU s per 1,000 scheduled jobs (scheduler and no-op"
        " handler together"
        + (f"; a plain job costs {plain:.3f} in the throughput scenario" if plain else "")
        + ").\n\n"
        + _table(["lateness", "p50/p95/p99 ms"], rows)
    )


def _scaling(s: dict[str, Any]) -> str:
    p = s["params"]
    series = s["contenders"]["conveyor"]["series"]
    one = series[0]["jobs_per_s"] if series else 0
    rows = [
        [
            x["processes"],
            x["jobs"],
            x["jobs_per_s"],
            _ratio(x["jobs_per_s"], one),
            x["span_jobs_per_s"],
            x["cpu_s_per_1000"],
        ]
        for x in series
    ]
    header = ["worker processes", "jobs", "jobs/s (middle 80%)", "x 1 process"]
    header += ["jobs/s (whole span)", "CPU s / 1,000 jobs (all processes)"]
    return (
        f"## {TITLES['scaling']}\n\n"
        f"For each step, {p['jobs_per_step']:,} no-op jobs preloaded on a fresh `normal` topic of"
        f" {p['partitions']} partitions, then that many `conveyor worker` processes (concurrency"
        f" {p['concurrency']} each) started together in one group. Jobs/s are over the jobs that"
        f" finished between the {p['trim'] * 100:g}th and {100 - p['trim'] * 100:g}th percentile"
        " of finish times, so the rebalances of processes joining one by one are left out; the"
        " whole span (first start to last finish) is shown beside. All processes share this"
        " machine's CPUs with the broker and Postgres.\n\n" + _table(header, rows)
    )


def _visibility(s: dict[str, Any]) -> str:
    p = s["params"]
    c = s["contenders"]["conveyor"]
    catch = c["catch_up"]
    rows = []
    labels = {
        "ledger": "`conveyor ledger` alone, no worker",
        "in_worker": f"ledger inside a worker far behind ({p['worker_handler_ms']} ms jobs)",
    }
    for name, label in labels.items():
        step = c[name]
        rows.append(
            [
                label,
                step["jobs"],
                step["achieved_rate"],
                step["visible"],
                ms(step["submit_to_visible"]),
                ms(step["submit_to_statement"]) if step.get("submit_to_statement") else "",
                step["cpu_s_per_1000"],
            ]
        )
    header = ["set-up", "jobs", "submitted/s", "seen queued", "submit to visible p50/p95/p99 ms"]
    header += ["of which before the statement", "CPU s / 1,000 jobs (ledger or worker process)"]
    claimed = c["in_worker"].get("claimed_first", 0)
    return (
        f"## {TITLES['visibility']}\n\n"
        "The ledger reads the job topics in its own group and inserts a `queued` row per job,"
        " one statement per fetch. Catch-up: a backlog of"
        f" {p['backlog']:,} jobs recorded by `conveyor ledger` alone at"
        f" **{catch['jobs_per_s']:,.0f} jobs/s** (first row to last), costing"
        f" **{catch['cpu_s_per_1000']:g} CPU s per 1,000 jobs** in its process (Postgres's"
        " share is in the machine's figure,"
        f" {catch['machine_busy_pct']:.0f}% busy). Then jobs submitted one by one at"
        f" {p['rate']:,.0f}/s for {p['seconds']:g} s per set-up, with no worker running them,"
        " or with a worker thousands of jobs behind. Visible means the bench's LISTEN got the"
        " notification the `jobs` insert sends at commit; the clock starts just before"
        " `Producer.submit`, so linger, broker, fetch, statement and commit all count."
        f" In the worker set-up the worker itself recorded {claimed:,} job(s) first.\n\n"
        + _table(header, rows)
    )


def ms(percentiles: dict[str, float]) -> str:
    """p50/p95/p99 of ``percentiles`` (milliseconds), as every table and summary shows them."""
    return "/".join(_cell(float(percentiles[p])) for p in ("p50", "p95", "p99"))


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "throughput": _throughput,
    "latency": _latency,
    "priority": _priority,
    "keys": _keys,
    "memory": _memory,
    "scaling": _scaling,
    "ui": _ui,
    "scheduling": _scheduling,
    "visibility": _visibility,
}
"""Each scenario's section, by scenario name, in the order BENCHMARKS.md lists them."""
