"""The README's "Run your own handlers locally", run as written.

Its Python block becomes ``myapp.py`` in a fresh directory; its shell blocks run there
with nothing but PATH, HOME and LANG set, as a newcomer's shells would, except for the
``export`` lines ``conveyor dev`` prints, which the README says to paste.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.process_helpers import read_until, session_processes

ROOT = Path(__file__).resolve().parents[2]
PLAIN_ENV = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
SECTION = "## Run your own handlers locally"

pytestmark = pytest.mark.devstack  # the embedded default stack, as the README runs it


def section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


def commands(block: str) -> list[list[str]]:
    """Each line of a shell block as argv, without its comment."""
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def conveyor(argv: list[str]) -> list[str]:
    """The command as this test runs it: ``conveyor`` from the test's interpreter."""
    assert argv[0] == "conveyor", argv
    return [sys.executable, "-m", "conveyor", *argv[1:]]


def exports(lines: list[str]) -> dict[str, str]:
    """The variables of the ``export NAME=value`` lines, as a shell would read them."""
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            found[name] = value
    return found


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    [python] = blocks("python")
    (tmp_path / "myapp.py").write_text(python)
    return tmp_path


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        conveyor(argv),
        cwd=cwd,
        env={**PLAIN_ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes to Ctrl-C (in reverse order) when the test ends, however it ends."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def status_of(job_id: str, cwd: Path, env: dict[str, str], argv: list[str]) -> str:
    """Runs the README's status line for ``job_id`` until the job is complete."""
    command = conveyor([job_id if arg == "JOB_ID" else arg for arg in argv])
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            command, cwd=cwd, env={**PLAIN_ENV, **env}, capture_output=True, text=True, check=True
        ).stdout
        if out.startswith(f"job {job_id}: complete") or time.monotonic() > deadline:
            return out
        time.sleep(0.1)  # the poll interval of a deadline-bounded wait, as a user re-runs it


async def greetings(env: dict[str, str]) -> list[tuple[str, str]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(env["CONVEYOR_DATABASE_URL"])
    try:
        schema = env["CONVEYOR_DATABASE_SCHEMA"]
        rows = await conn.fetch(f'SELECT job_id, name FROM "{schema}".greetings')
    finally:
        await conn.close()
    return [(row["job_id"], row["name"]) for row in rows]


def test_the_section_has_one_module_and_the_two_ways_to_run_it() -> None:
    assert len(blocks("python")) == 1
    one, two = (commands(block) for block in blocks("sh"))
    assert one == [["conveyor", "dev", "--app", "myapp:worker"]]
    assert [argv[:2] for argv in two] == [
        ["conveyor", "dev"],
        ["conveyor", "worker"],
        ["conveyor", "submit"],
        ["conveyor", "status"],
    ]


@pytest.mark.timeout(300)
def test_the_stack_alone_and_your_worker_in_another_shell(
    app_dir: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    dev, worker, submit, status = commands(blocks("sh")[1])
    stack = start(dev, app_dir, {})
    stopped.append(stack)
    env = exports(read_until(stack, "press Ctrl-C", timeout=180))
    assert set(env) >= {
        "CONVEYOR_KAFKA_BOOTSTRAP",
        "CONVEYOR_DATABASE_URL",
        "CONVEYOR_SCHEMA_REGISTRY_URL",
    }
    stopped.append(start(worker, app_dir, env))
    submitted = subprocess.run(
        conveyor(submit),
        cwd=app_dir,
        env={**PLAIN_ENV, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    shown = status_of(job_id, app_dir, env, status)
    assert shown.startswith(f"job {job_id}: complete"), shown
    assert json.dumps({"greeted": "Ada"}) in shown, shown
    assert asyncio.run(greetings(env)) == [(job_id, "Ada")]
    for proc in reversed(stopped):
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert session_processes(proc.pid) == []


@pytest.mark.timeout(300)
def test_dev_with_your_app_runs_your_handlers_and_shows_them_in_the_summary(
    app_dir: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    [[dev]] = [commands(blocks("sh")[0])]
    stack = start(dev, app_dir, {})
    stopped.append(stack)
    lines = read_until(stack, "is waiting for jobs", timeout=180)
    env = exports(lines)
    submitted = subprocess.run(
        [sys.executable, "-m", "conveyor", "submit", "greet.hello", "--payload", '{"name": "Bo"}'],
        cwd=app_dir,
        env={**PLAIN_ENV, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    lines += read_until(stack, "status: complete 1 ", timeout=60)
    assert asyncio.run(greetings(env)) == [(submitted.stdout.strip(), "Bo")]
    os.killpg(stack.pid, signal.SIGINT)
    rest, _ = stack.communicate(timeout=60)
    out = "".join(lines) + rest
    assert stack.returncode == 0, out
    assert "submitted:" not in out  # no example samples next to your own jobs
    assert "stopped: every service of the stack has exited" in out
    assert session_processes(stack.pid) == []
