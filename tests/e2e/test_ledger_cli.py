"""``conveyor ledger`` as a subprocess: it starts, records a submitted job as queued (which
``conveyor status`` shows with its position), and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from conveyor import JobStore, Producer, Settings
from tests.conftest import run_cli, settings_env
from tests.worker_helpers import eventually, prepare


def start_ledger(env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "ledger"],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_conveyor_ledger_records_a_job_as_queued_and_stops_cleanly(
    settings: Settings, schema_registry_url: str
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    env = settings_env(live)
    proc = start_ledger(env)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
        assert first.startswith("ledger: consuming "), first
        assert f"in group {live.topic_prefix}.ledger" in first
        with Producer(live) as producer:
            job_id = producer.submit("ledger.cli", {"n": 1}, key="k", wait=True)
        async with JobStore(live) as store:

            async def queued() -> bool:
                return (await store.status(job_id)).state == "queued"

            await eventually(queued, what="the job to be queued")
        shown = await asyncio.to_thread(run_cli, "status", job_id, "--json", env=env)
        assert shown.code == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert (status["state"], status["type"], status["position"]) == ("queued", "ledger.cli", 0)
        text = await asyncio.to_thread(run_cli, "status", job_id, env=env)
        assert "position    0 job(s) ahead in its partition" in text.stdout
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "ledger: stopped; 1 message(s) read, 1 queued row(s) inserted" in out
