"""Producer failures with a real librdkafka client (issue 14, defect 10).

The broker is unreachable and the delivery timeout short, so messages expire with
librdkafka's ``_MSG_TIMED_OUT``: an uncertain delivery, never reported as "not delivered".
A waiter its caller cancels meanwhile must not kill the thread that serves every other
delivery report.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from conveyor.errors import DeliveryError, UncertainDeliveryError
from conveyor.producer.delivery import DeliveryCore
from conveyor.producer.jobs import Outgoing
from conveyor.settings import Settings


def _message(job_id: str) -> Outgoing:
    return Outgoing(job_id, "acme.jobs.normal", job_id.encode(), b"value", [])


async def test_a_timeout_is_uncertain_and_a_cancelled_waiter_leaves_the_poll_thread_alive(
    unused_tcp_port: int,
) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}")
    core = DeliveryCore(settings, delivery_timeout=1.0)
    try:
        [given_up, waited] = core.send([_message("given-up"), _message("waited")])
        waiter = asyncio.ensure_future(asyncio.wrap_future(given_up))
        await asyncio.sleep(0)  # the waiter is waiting
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with pytest.raises(UncertainDeliveryError, match="may or may not have been delivered"):
            await asyncio.to_thread(core.wait, [waited])
        # The report of the cancelled waiter's message came first or with it: the thread
        # that serves delivery reports survived it and still serves the next message.
        [later] = core.send([_message("later")])
        with pytest.raises(UncertainDeliveryError):
            await asyncio.to_thread(core.wait, [later])
        assert core._poller.is_alive()
    finally:
        with contextlib.suppress(DeliveryError):
            core.close(timeout=0)
