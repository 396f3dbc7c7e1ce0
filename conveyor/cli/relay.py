"""``conveyor relay``: run the retry relay on its own, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from conveyor.cli import common
from conveyor.consumer import preflight
from conveyor.consumer.relay import RetryRelay
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``relay`` subcommand."""
    parser = subparsers.add_parser(
        "relay",
        help="hold retried jobs until due, then republish them to their priority topics",
        description=(
            "Consume every retry topic (<prefix>.jobs.retry.<delay>) in consumer group "
            "<prefix>.relay and republish each message to its priority's job topic once its "
            "not_before has passed. `conveyor worker` runs the same relay; run this to scale "
            "it separately. Stops on SIGTERM or SIGINT after committing what it republished."
        ),
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    common.set_handler(parser, _relay)


def _relay(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-relay", settings, args.log_level)
    return common.run(_run(settings))


async def _run(settings: Settings) -> int:
    stop = common.stop_on_signals()
    await preflight.check(settings, database=False)
    with Serde(settings) as serde:
        relay = RetryRelay(settings, serde=serde)
        await relay.start()
        print(
            f"relay {relay.group_id}: retry topics {', '.join(relay.retry_topics)}",
            flush=True,
        )
        await relay.run(stop)
    print(
        f"relay stopped: {relay.stats.republished} republished, "
        f"{relay.stats.undecodable} undecodable skipped",
        flush=True,
    )
    return common.EXIT_OK
