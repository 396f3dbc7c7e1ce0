"""Retry policy and failure classification."""

from __future__ import annotations

import pytest

from conveyor.consumer import failures
from conveyor.consumer.failures import RetryPolicy, classify
from conveyor.errors import ConfigurationError, PermanentError, Problem, ValidationError


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    policy = RetryPolicy(initial=1.0, multiplier=2.0, maximum=10.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_adds_at_most_its_amount() -> None:
    policy = RetryPolicy(initial=1.0, jitter=0.5)
    delays = [policy.delay(3) for _ in range(200)]
    assert all(4.0 <= d <= 4.5 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial": 0}, {"maximum": 0.5}, {"multiplier": 0.5}, {"jitter": -1}],
)
def test_an_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_any_exception_is_retried_until_the_last_attempt() -> None:
    assert classify(RuntimeError(), attempt=1, max_attempts=3) == failures.Verdict(True, None)
    assert classify(RuntimeError(), attempt=3, max_attempts=3).reason == "MaxRetries"
    assert classify(TimeoutError(), attempt=2, max_attempts=3).retry is True
    assert classify(TimeoutError(), attempt=3, max_attempts=3).reason == "Timeout"


def test_some_failures_go_to_the_dlq_on_the_first_attempt() -> None:
    assert classify(PermanentError("no"), attempt=1, max_attempts=5).reason == "Permanent"
    invalid = ValidationError([Problem(0, "payload", "bad")])
    assert classify(invalid, attempt=1, max_attempts=5).reason == "Validation"
    for reason in ("HandlerMissing", "Deserialization", "Validation"):
        verdict = classify(RuntimeError(), attempt=1, max_attempts=5, reason=reason)
        assert verdict == failures.Verdict(False, reason)


def test_attempt_errors_carry_type_message_and_traceback() -> None:
    try:
        raise ValueError("broken input")
    except ValueError as exc:
        error = failures.attempt_error(exc, 2)
    assert (error["attempt"], error["error_type"], error["message"]) == (
        2,
        "ValueError",
        "broken input",
    )
    assert "raise ValueError" in error["traceback"]
    assert failures.error_json(error, "MaxRetries")["reason"] == "MaxRetries"


def test_a_stale_early_cancel_is_dropped_not_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel for a job not running here is remembered for EARLY_CANCEL_TTL only: the
    same id arriving later (a DLQ replay days after) is not cancelled by it."""
    from unittest import mock

    from conveyor.consumer import cancels

    now = [1000.0]
    monkeypatch.setattr("conveyor.consumer.cancels.time.monotonic", lambda: now[0])
    jobs = cancels.RunningJobs()
    assert jobs.cancel("fresh", "why") is False  # not running here: remembered
    assert jobs.cancel("stale") is False
    fresh_task, stale_task = mock.Mock(), mock.Mock()
    fresh = jobs.start("fresh", fresh_task)
    assert (fresh.cancel_requested, fresh.cancel_reason) == (True, "why")
    fresh_task.cancel.assert_called_once_with()
    now[0] += cancels.EARLY_CANCEL_TTL + 1
    stale = jobs.start("stale", stale_task)
    assert stale.cancel_requested is False
    stale_task.cancel.assert_not_called()
    jobs.finish("fresh")
    again = jobs.start("fresh", mock.Mock())  # taken once
    assert again.cancel_requested is False


def test_an_error_with_nul_and_huge_text_is_cleaned_for_postgres_and_the_broker() -> None:
    """jsonb refuses NUL, and a retry envelope must stay below the broker's message size."""
    error = failures.attempt_error(ValueError("bad\x00byte " + "x" * 100_000), 1)
    assert "\x00" not in error["message"]
    assert error["message"].startswith("bad\\x00byte ")
    assert len(error["message"]) == failures.MESSAGE_LIMIT
    assert error["message"].endswith(failures.TRUNCATED)
    assert len(error["traceback"]) <= failures.TRACEBACK_LIMIT


def test_a_long_retry_chain_keeps_the_first_and_the_latest_errors() -> None:
    history: list[dict[str, object]] = []
    for attempt in range(1, 51):
        history = failures.history_with(history, {"attempt": attempt})
    assert len(history) == failures.HISTORY_LIMIT
    assert [e["attempt"] for e in history] == [1, *range(51 - failures.HISTORY_LIMIT + 1, 51)]
