"""Watching a command-line process and everything it started."""

from __future__ import annotations

import subprocess
import time

import pytest


def session_processes(sid: int) -> list[str]:
    """The processes still in session ``sid``: start a child with ``start_new_session``
    and this lists it and every process it started that is still alive."""
    ps = subprocess.run(
        ["ps", "-e", "-o", "sid=,pid=,args="], capture_output=True, text=True, check=True
    )
    return [
        line.strip()
        for line in ps.stdout.splitlines()
        if line.split(None, 1) and line.split(None, 1)[0] == str(sid)
    ]


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
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
