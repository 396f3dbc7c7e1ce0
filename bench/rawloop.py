"""The ceiling: a bare confluent-kafka consume-and-commit loop over a job topic.

Run as ``python -m bench.rawloop --topic T --group G --count N --status FILE``, with the
broker (and its security settings) from ``CONVEYOR_*`` variables. It reads
batches, commits each batch synchronously (so, like conveyor, it commits only what it
has handled), and after ``N`` records idles until SIGTERM (so its memory can still be
read). It decodes nothing and records nothing:
what it reaches is what this broker and machine can deliver to one Python process.
Progress goes to the JSON file ``--status``, replaced atomically after every batch:
``count`` records so far, ``first`` and ``last`` the Unix times of the first and the
latest batch's commit, and ``first_batch`` the first batch's size, so the rate over the
run can leave out the batch that was fetched before ``first``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from confluent_kafka import Consumer

from conveyor.settings import Settings

BATCH = 500


def _write(path: Path, status: dict[str, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def run(settings: Settings, topic: str, group: str, count: int, status_path: Path) -> None:
    """Consumes ``count`` records from ``topic`` in group ``group``, committing each batch."""
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "log_level": 0,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    status: dict[str, float] = {}
    try:
        while seen < count:
            records = consumer.consume(BATCH, timeout=0.5)
            records = [r for r in records if r.error() is None]
            if not records:
                continue
            seen += len(records)
            consumer.commit(asynchronous=False)
            now = time.time()
            if not status:
                status = {"first": now, "first_batch": seen}
            status.update(count=seen, last=now)
            _write(status_path, status)
        while True:  # done; SIGTERM ends the process
            time.sleep(3600)
    finally:
        consumer.close()


def main() -> None:
    """Parses the command line and runs the loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--status", type=Path, required=True)
    args = parser.parse_args()
    run(Settings.from_env(), args.topic, args.group, args.count, args.status)


if __name__ == "__main__":
    main()
