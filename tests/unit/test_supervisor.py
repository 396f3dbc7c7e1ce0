"""The supervisor of ``conveyor worker --processes N``, with small Python children."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor.supervisor import Supervisor

pytestmark = pytest.mark.unit

#: Exits 0 on SIGTERM; writes a file named after its pid once it is listening for it.
WAITS_FOR_SIGTERM = (
    "import os, pathlib, signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
    "pathlib.Path(sys.argv[1], str(os.getpid())).touch(); signal.pause()"
)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # the poll interval of a deadline-bounded wait


def test_children_that_keep_failing_to_start_end_the_run_with_exit_1() -> None:
    starts: list[int] = []

    def command(index: int) -> list[str]:
        starts.append(index)
        return _python("import sys; sys.exit(3)")

    supervisor = Supervisor(command, processes=1, start_seconds=60.0, max_start_failures=3)
    assert supervisor.run() == 1
    # Started three times (with backoff between), then given up: no crash loop.
    assert starts == [0, 0, 0]


def test_a_child_that_ran_and_died_is_started_again() -> None:
    supervisor = Supervisor(
        lambda _i: _python("pass"), processes=2, start_seconds=0.0, max_start_failures=1
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(supervisor.run()))
    thread.start()
    try:
        # Each exit counts as a run (start_seconds=0), so each child comes back.
        _until(lambda: all(c.restarts >= 1 for c in supervisor._children))
    finally:
        supervisor.stop()
        thread.join(30)
    # The run ended on stop (a child caught starting again may exit by the SIGTERM).
    assert not thread.is_alive()
    assert len(codes) == 1


def test_stop_passes_sigterm_to_every_child_and_reports_their_exit(tmp_path: Path) -> None:
    supervisor = Supervisor(lambda _i: [*_python(WAITS_FOR_SIGTERM), str(tmp_path)], processes=3)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(supervisor.run()))
    thread.start()
    _until(lambda: len(list(tmp_path.iterdir())) == 3)
    pids = supervisor.pids
    supervisor.stop()
    thread.join(30)
    assert codes == [0]
    assert supervisor.pids == []
    assert len(set(pids)) == 3


def test_a_child_that_will_not_stop_is_killed_after_the_timeout() -> None:
    ignores = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()"
    supervisor = Supervisor(lambda _i: _python(ignores), processes=1, stop_timeout=1.0)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(supervisor.run()))
    thread.start()
    _until(lambda: len(supervisor.pids) == 1)
    supervisor.stop()
    thread.join(30)
    assert codes == [1]  # killed, so not a clean stop


def test_each_child_gets_its_own_environment_on_top_of_the_parents(tmp_path: Path) -> None:
    # Written aside, then renamed: the test never reads a file half written.
    writes = (
        "import os, pathlib, sys; pathlib.Path(sys.argv[1] + '.tmp').write_text(os.environ['X']);"
        " os.replace(sys.argv[1] + '.tmp', sys.argv[1])"
    )
    supervisor = Supervisor(
        lambda i: [*_python(writes), str(tmp_path / str(i))],
        environment=lambda i: {"X": f"member-{i}"},
        processes=2,
        start_seconds=0.0,
    )
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        _until(lambda: len(list(tmp_path.glob("[0-9]"))) == 2)
    finally:
        supervisor.stop()
        thread.join(30)
    assert {p.name: p.read_text() for p in tmp_path.glob("[0-9]")} == {
        "0": "member-0",
        "1": "member-1",
    }
