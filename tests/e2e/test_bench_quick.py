"""The benchmark harness's smoke run (``python -m bench --quick``) keeps working.

It proves the harness runs every scenario against the real services and yields figures
for every contender; it asserts nothing about speed (the figures are only checked to be
there and positive).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import redisrun
from conveyor.embedded import redis as embedded_redis

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "throughput",
    "latency",
    "priority",
    "keys",
    "memory",
    "scaling",
    "ui",
    "scheduling",
    "visibility",
}
CHARTS = {"throughput", "latency", "priority", "keys", "scaling"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_quick(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    out, markdown = tmp_path / "result.json", tmp_path / "BENCHMARKS.md"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--markdown", str(markdown)],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), markdown.read_text()


def _redis_down() -> str | None:
    """Why the bench will have no Redis, or None: it uses BENCH_REDIS_URL, else starts one."""
    if os.environ.get("BENCH_REDIS_URL") or embedded_redis.unavailable() is not None:
        return redisrun.unavailable()
    return None


def _assert_redis_baseline(figures: dict[str, Any], redis_down: str | None) -> bool:
    """A Redis baseline is skipped exactly when Redis is unreachable; returns whether it ran."""
    if redis_down is not None:
        assert figures == {"skipped": redis_down}
        return False
    assert "skipped" not in figures, figures
    return True


@pytest.mark.timeout(300)
def test_quick_run_reports_every_scenario_and_contender(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, schema_registry_url: str
) -> None:
    repo_markdown = REPO_ROOT / "BENCHMARKS.md"
    before = repo_markdown.read_bytes() if repo_markdown.exists() else None
    repo_charts = _charts(REPO_ROOT)
    redis_down = _redis_down()

    result, markdown = _run_quick(
        tmp_path,
        {
            "CONVEYOR_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_SCHEMA_REGISTRY_URL": schema_registry_url,
        },
    )

    assert result["meta"]["quick"] is True
    assert result["meta"]["broker"] == "kafka"  # a broker named by the environment
    assert set(result["scenarios"]) == SCENARIOS
    errors = {k: v["error"] for k, v in result["scenarios"].items() if "error" in v}
    assert errors == {}

    throughput = result["scenarios"]["throughput"]["contenders"]
    ran = ["raw", "raw_durable", "conveyor", "conveyor_processes"]
    ran += [n for n in ("celery", "dramatiq") if _assert_redis_baseline(throughput[n], redis_down)]
    assert throughput["conveyor_processes"]["processes"] == 2
    for name in ran:
        figures = throughput[name]
        assert figures["jobs_per_s"] > 0, (name, figures)
        assert figures["peak_rss_mb"] > 0, (name, figures)
        assert figures["cpu_s_per_1000"] >= 0, (name, figures)
    # The raw durable loop writes the rows conveyor writes: queued, processing, complete.
    assert throughput["raw_durable"]["transitions_per_job"] == 3
    assert throughput["conveyor"]["transitions_per_job"] == 3
    assert throughput["conveyor_processes"]["transitions_per_job"] == 3
    ratios = result["scenarios"]["throughput"]["ratios"]
    ours = ("conveyor", "conveyor_processes")
    expected = {f"{one}_to_{name}" for one in ours for name in ran if name not in ours}
    assert expected == set(ratios)
    assert all(ratio > 0 for ratio in ratios.values()), ratios

    latency = result["scenarios"]["latency"]["contenders"]
    timed = ["conveyor"]
    timed += [n for n in ("celery", "dramatiq") if _assert_redis_baseline(latency[n], redis_down)]
    for name in timed:
        steps = latency[name]["steps"]
        assert len(steps) == len(result["scenarios"]["latency"]["params"]["rates"]), name
        for step in steps:
            assert step["jobs"] > 0
            assert step["submit_to_complete"]["p99"] >= step["submit_to_complete"]["p50"] > 0
        lone = latency[name]["lone"]
        assert lone["jobs"] == result["scenarios"]["latency"]["params"]["lone_jobs"], name
        assert lone["submit_to_start"]["p99"] >= lone["submit_to_start"]["p50"] > 0, name

    priorities = result["scenarios"]["priority"]["contenders"]["conveyor"]["priorities"]
    assert set(priorities) == {"critical", "high", "normal", "low"}
    assert all(p["share_pct"] > 0 for p in priorities.values()), priorities
    assert sum(p["share_pct"] for p in priorities.values()) == pytest.approx(100, abs=0.5)
    over_time = result["scenarios"]["priority"]["contenders"]["conveyor"]["over_time"]
    backlog = result["scenarios"]["priority"]["params"]["backlog_per_priority"]
    assert {p: sum(counts) for p, counts in over_time["started"].items()} == dict.fromkeys(
        priorities, backlog
    )

    keys = result["scenarios"]["keys"]["contenders"]
    for name in ("conveyor", "conveyor_live"):  # a backlog, then submitted while running
        series = keys[name]["series"]
        assert [s["keys"] for s in series] == [1, 10, 100, 1000]
        assert all(s["jobs_per_s"] > 0 for s in series), series

    memory = result["scenarios"]["memory"]["contenders"]["conveyor"]
    assert memory["jobs_done"] > 0
    assert memory["peak_rss_mb"] > 0
    # The worker alone is part of the tree, which holds its ledger child too.
    assert 0 < memory["worker_peak_rss_mb"] < memory["peak_rss_mb"]

    scaling = result["scenarios"]["scaling"]["contenders"]["conveyor"]["series"]
    assert [s["processes"] for s in scaling] == [1, 2, 4]
    assert all(s["jobs_per_s"] > 0 and s["jobs"] > 0 for s in scaling), scaling

    scheduling = result["scenarios"]["scheduling"]["contenders"]["conveyor"]
    jobs = result["scenarios"]["scheduling"]["params"]["jobs"]
    assert (scheduling["jobs"], scheduling["released"], scheduling["early"]) == (jobs, jobs, 0)
    late = scheduling["release_lateness_ms"]
    assert late["p99"] >= late["p50"] >= 0
    assert scheduling["cpu_s_per_1000"] > 0
    visibility = result["scenarios"]["visibility"]["contenders"]["conveyor"]
    assert visibility["catch_up"]["jobs_per_s"] > 0
    for step in (visibility["ledger"], visibility["in_worker"]):
        # Every job submitted was seen queued (or claimed), in order of percentiles.
        assert step["visible"] == step["jobs"] > 0, step
        timing = step["submit_to_visible"]
        assert timing["p99"] >= timing["p50"] > 0, step

    titles = ("1. Throughput", "2. Latency", "3. Priority", "4. Key concurrency", "5. Memory")
    # The budget is rendered from the committed python -m bench.profile result.
    scaled = ("6. Scaling", "7. Web UI", "8. Scheduled jobs", "9. Visible as queued")
    for title in (*titles, *scaled, "Per-job CPU budget of the worker"):
        assert f"## {title}" in markdown
    assert "- Visible as queued at 300 jobs/s offered" in markdown
    charts = _charts(tmp_path)
    assert set(charts) == {f"{name}.png" for name in CHARTS}
    assert all(data.startswith(PNG_MAGIC) for data in charts.values())
    for name in charts:
        assert f"](docs/bench/{name})" in markdown
    after = repo_markdown.read_bytes() if repo_markdown.exists() else None
    assert after == before, "the smoke run must not rewrite the repository's BENCHMARKS.md"
    assert _charts(REPO_ROOT) == repo_charts, "nor the repository's charts"


def _charts(markdown_dir: Path) -> dict[str, bytes]:
    """The chart files beside a BENCHMARKS.md, by name."""
    folder = markdown_dir / "docs" / "bench"
    return {p.name: p.read_bytes() for p in folder.glob("*.png")} if folder.exists() else {}
