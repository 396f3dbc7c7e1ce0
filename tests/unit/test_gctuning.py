"""``conveyor.gctuning``: the collector's settings while a worker or a ledger runs."""

from __future__ import annotations

import gc

import pytest

from conveyor import gctuning


def test_the_thresholds_and_the_freeze_hold_for_the_block_and_are_undone_after() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    kept = [[i] for i in range(100)]  # start-up objects, as it were
    with gctuning.tuned((1234, 5, 6)):
        assert gc.get_threshold() == (1234, 5, 6)
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_an_error_in_the_block_still_undoes_them() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), gctuning.tuned((999, 3, 4)):
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
