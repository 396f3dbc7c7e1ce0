"""``conveyor dev`` serves the web UI beside its worker and stops it with the rest."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.test_dev_cli import PLAIN_ENV, refuses_connections
from tests.process_helpers import read_until

pytestmark = pytest.mark.devstack


def test_dev_prints_the_ui_url_serves_the_overview_and_stops_it_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "--jobs", "8"],
        env=PLAIN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = read_until(proc, "press Ctrl-C", timeout=90)
        found = re.search(r"ui: (http://127\.0\.0\.1:(\d+)/)", "".join(lines))
        assert found is not None, lines
        overview = httpx.get(found.group(1) + "api/overview", timeout=30)
        page = httpx.get(found.group(1), timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert overview.status_code == 200
    assert set(overview.json()["priorities"]) == {"critical", "high", "normal", "low"}
    assert 'id="overview-table"' in page.text
    assert proc.returncode == 0, rest
    assert refuses_connections("127.0.0.1", int(found.group(2)))
