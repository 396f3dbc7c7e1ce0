"""The README's quickstart: exactly two commands, and the first one works as written.

The second command, ``make test``, is what ``.ci/run`` runs on a fresh clone, so CI
follows it literally; this test runs the first, ``make dev``, and presses Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.process_helpers import read_until, session_processes

pytestmark = pytest.mark.devstack


ROOT = Path(__file__).resolve().parents[2]
PLAIN_ENV = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the quickstart has no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quickstart_is_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = quickstart_commands()
    assert commands == ["make dev", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line.startswith("make")] == ["make test"]


@pytest.mark.timeout(900)  # creates .venv and installs conveyor when it is not there yet
def test_make_dev_runs_the_stack_and_ctrl_c_stops_it_all() -> None:
    first, _second = quickstart_commands()
    proc = subprocess.Popen(
        first.split(),
        cwd=ROOT,
        env=PLAIN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = read_until(proc, "press Ctrl-C", timeout=840)
        lines += read_until(proc, "status: complete", timeout=60)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    out = "".join(lines) + rest
    assert re.search(r"status: complete \d+", out), out
    assert "stopped: every service of the stack has exited" in out, out
    assert session_processes(proc.pid) == []
