"""``conveyor ui`` as an operator starts it: a subprocess that serves until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

from conveyor.settings import Settings
from conveyor.ui import server
from tests.conftest import settings_env
from tests.process_helpers import read_until


def test_ui_serves_with_basic_auth_prints_its_url_and_stops_on_ctrl_c(
    migrated: Settings,
) -> None:
    port = server.free_port(preferred=0)
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "ui", "--port", str(port), "--auth", "ops:pw"],
        env={**base, **settings_env(migrated)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines = read_until(proc, "conveyor ui: http", timeout=60)
        url = f"http://127.0.0.1:{port}"
        answered = _first_answer(url)
        anonymous = httpx.get(f"{url}/api/workers", timeout=30)
        authed = httpx.get(f"{url}/api/workers", auth=("ops", "pw"), timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert lines[-1].strip() == f"conveyor ui: http://127.0.0.1:{port}/"
    assert answered
    assert anonymous.status_code == 401
    assert (authed.status_code, authed.json()) == (200, {"workers": []})
    assert proc.returncode == 0, err


def _first_answer(url: str) -> bool:
    """Waits (bounded) for the server, which prints its URL just before it binds."""
    with httpx.Client(transport=httpx.HTTPTransport(retries=50)) as client:
        return client.get(f"{url}/static/conveyor.css", timeout=30).status_code == 401
