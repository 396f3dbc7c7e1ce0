"""The weighted scheduler: 4:3:2:1 shares, interleaved, and no ready priority starves."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from conveyor.consumer.scheduler import WeightedScheduler
from conveyor.topology import PRIORITY_WEIGHTS

WEIGHTS = {"critical": 4, "high": 3, "normal": 2, "low": 1}
ALL = tuple(WEIGHTS)


def picks(scheduler: WeightedScheduler, ready: tuple[str, ...], count: int) -> list[str]:
    chosen = []
    for _ in range(count):
        priority = scheduler.pick(ready)
        assert priority is not None
        chosen.append(priority)
    return chosen


def longest_pass_over(sequence: list[tuple[tuple[str, ...], str]], priority: str) -> int:
    """The longest run of picks that went elsewhere while ``priority`` was ready."""
    longest = run = 0
    for ready, chosen in sequence:
        run = run + 1 if priority in ready and chosen != priority else 0
        longest = max(longest, run)
    return longest


def test_the_weights_match_the_topologys() -> None:
    assert dict(PRIORITY_WEIGHTS) == WEIGHTS


def test_all_ready_share_exactly_400_300_200_100_over_1000_picks() -> None:
    chosen = picks(WeightedScheduler(WEIGHTS), ALL, 1000)
    assert Counter(chosen) == {"critical": 400, "high": 300, "normal": 200, "low": 100}


def test_every_window_of_ten_picks_has_exact_shares() -> None:
    chosen = picks(WeightedScheduler(WEIGHTS), ALL, 200)
    for start in range(len(chosen) - 10 + 1):
        assert Counter(chosen[start : start + 10]) == WEIGHTS, f"window at {start}"


def test_picks_are_interleaved_not_in_runs() -> None:
    chosen = picks(WeightedScheduler(WEIGHTS), ALL, 10)
    assert chosen == [
        "critical",
        "high",
        "normal",
        "critical",
        "high",
        "low",
        "critical",
        "normal",
        "high",
        "critical",
    ]


def test_with_all_ready_each_is_picked_at_least_once_in_every_ten_picks() -> None:
    sequence = [(ALL, priority) for priority in picks(WeightedScheduler(WEIGHTS), ALL, 500)]
    assert {p: longest_pass_over(sequence, p) for p in ALL} == {
        "critical": 2,
        "high": 3,
        "normal": 4,
        "low": 9,
    }


@pytest.mark.parametrize(
    "ready",
    [
        ("critical", "low"),
        ("high", "normal"),
        ("critical", "high", "low"),
        ("high", "normal", "low"),
        ("normal",),
    ],
)
def test_a_subset_shares_by_its_weights_in_every_window(ready: tuple[str, ...]) -> None:
    period = sum(WEIGHTS[p] for p in ready)
    chosen = picks(WeightedScheduler(WEIGHTS), ready, 50 * period)
    expected = {p: WEIGHTS[p] for p in ready}
    for start in range(len(chosen) - period + 1):
        assert Counter(chosen[start : start + period]) == expected, f"window at {start}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_subset_shares_by_its_weights_after_any_history(seed: int) -> None:
    """Credit left over from earlier ready sets shifts a share by at most one pick."""
    rng = random.Random(seed)
    scheduler = WeightedScheduler(WEIGHTS)
    for _ in range(200):
        scheduler.pick([p for p in ALL if rng.random() < 0.5])
    ready = ("critical", "normal", "low")
    chosen = Counter(picks(scheduler, ready, 700))
    for priority in ready:
        assert abs(chosen[priority] - 100 * WEIGHTS[priority]) <= 1, chosen


@pytest.mark.parametrize("seed", [7, 8, 9, 10])
def test_no_ready_priority_starves_while_others_come_and_go(seed: int) -> None:
    """Random ready sets: a continuously ready priority is passed over at most 3/5/7/14 picks.

    The bounds are the exact worst cases over every reachable state (see the module
    docstring); with all four always ready they are 2/3/4/9.
    """
    rng = random.Random(seed)
    scheduler = WeightedScheduler(WEIGHTS)
    sequence = []
    for _ in range(5000):
        ready = tuple(p for p in ALL if rng.random() < 0.6)
        chosen = scheduler.pick(ready)
        if ready:
            assert chosen in ready
            sequence.append((ready, chosen))
        else:
            assert chosen is None
    bounds = {"critical": 3, "high": 5, "normal": 7, "low": 14}
    for priority, bound in bounds.items():
        assert longest_pass_over(sequence, priority) <= bound, priority


def test_the_worst_dynamic_case_passes_low_over_fourteen_times() -> None:
    """Critical and high taking turns with low ready throughout: the bound of 14 is reached.

    This pins the documented limit: changing ready sets can delay a priority beyond
    sum(weights) picks, though never indefinitely.
    """
    c, h, n, lo = ALL
    warm_up = [(h, lo), (n, lo), (c, n, lo), ALL, ALL, (c, lo), (c, lo), (c, lo)]
    streak = [
        *[(c, lo)] * 4,
        *[(h, lo)] * 3,
        (c, h, lo),
        (h, n, lo),
        ALL,
        (c, lo),
        (c, n, lo),
        (c, lo),
        (c, lo),
    ]
    scheduler = WeightedScheduler(WEIGHTS)
    for ready in warm_up:
        scheduler.pick(ready)
    chosen = [scheduler.pick(ready) for ready in streak]
    assert lo not in chosen
    assert scheduler.pick((c, lo)) == lo


def test_ties_go_to_the_higher_weight_then_to_declaration_order() -> None:
    # The second pick ties at 2 credits each; "low" is declared first, "high" weighs more.
    assert picks(WeightedScheduler({"low": 1, "high": 3}), ("low", "high"), 4) == [
        "high",
        "high",
        "low",
        "high",
    ]
    equal = WeightedScheduler({"b": 2, "a": 2})
    assert picks(equal, ("a", "b"), 4) == ["b", "a", "b", "a"]


def test_nothing_ready_gives_none_and_leaves_the_credits_alone() -> None:
    scheduler = WeightedScheduler(WEIGHTS)
    assert scheduler.pick([]) is None
    assert picks(scheduler, ALL, 10) == picks(WeightedScheduler(WEIGHTS), ALL, 10)


def test_a_single_priority_is_always_picked() -> None:
    assert picks(WeightedScheduler({"low": 1}), ("low",), 5) == ["low"] * 5


def test_an_unknown_ready_priority_is_rejected() -> None:
    with pytest.raises(ValueError, match="without a weight: \\['urgent'\\]"):
        WeightedScheduler(WEIGHTS).pick(["critical", "urgent"])


@pytest.mark.parametrize("weight", [0, -1, 1.5, True, "2"])
def test_a_weight_that_is_not_a_positive_integer_is_rejected(weight: object) -> None:
    with pytest.raises(ValueError, match="weight of 'low' must be a positive integer"):
        WeightedScheduler({"high": 3, "low": weight})  # type: ignore[dict-item]


def test_no_priorities_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one priority"):
        WeightedScheduler({})
