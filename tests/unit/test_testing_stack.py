"""The real-stack helpers refuse to guess where a job is."""

from __future__ import annotations

import pytest

from conveyor.errors import ConveyorError
from conveyor.testing import wait_for


async def test_wait_for_without_settings_or_a_running_worker_asks_for_settings() -> None:
    with pytest.raises(ConveyorError, match="pass settings="):
        await wait_for("0b7c4bb0-6a1e-4c56-9f6c-1d3f0e6b1a11", "complete", timeout=1)
