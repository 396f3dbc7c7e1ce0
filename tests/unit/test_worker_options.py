"""WorkerOptions defaults that users meet without choosing them."""

from __future__ import annotations

from pathlib import Path

from conveyor import WorkerOptions

ROOT = Path(__file__).resolve().parents[2]
#: Tansu holds an empty fetch for the whole max wait; an idle job waits up to that long
#: on a worker started by hand. 100 ms is the most the issue's newcomer should meet.
TANSU_IDLE_BUDGET_MS = 100


def test_the_default_fetch_wait_keeps_an_idle_job_on_tansu_from_waiting_long() -> None:
    """Kafka's own default (500 ms) made an idle job start 1.0-1.2 s after submit on Tansu."""
    assert WorkerOptions().fetch_max_wait_ms <= TANSU_IDLE_BUDGET_MS


def test_the_readme_and_architecture_state_the_default_fetch_wait() -> None:
    default = WorkerOptions().fetch_max_wait_ms
    assert f"`fetch_max_wait_ms` ({default} ms)" in (ROOT / "README.md").read_text()
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    assert f"default `fetch_max_wait_ms` is {default} ms" in architecture
