"""What a failed attempt means: retry it (after how long), or dead-letter it (and why).

Any exception is retryable until the job's attempts run out. Some failures are not
worth another attempt and go to the DLQ at once: ``PermanentError``, a payload that
fails its contract (``Validation``), a message that does not decode
(``Deserialization``) and a job type with no handler (``HandlerMissing``). A timeout
on the last attempt is reported as ``Timeout``; any other last failure as ``MaxRetries``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import tenacity

from conveyor.errors import ConfigurationError, PermanentError, ValidationError

MAX_RETRIES = "MaxRetries"
VALIDATION = "Validation"
HANDLER_MISSING = "HandlerMissing"
DESERIALIZATION = "Deserialization"
PERMANENT = "Permanent"
TIMEOUT = "Timeout"
#: Reasons that send a job to the DLQ on its first failure.
NOT_RETRYABLE = (VALIDATION, HANDLER_MISSING, DESERIALIZATION, PERMANENT)

#: Bounds of one attempt's error text, and of the history a retry or DLQ record carries.
MESSAGE_LIMIT = 4096
TRACEBACK_LIMIT = 8192
HISTORY_LIMIT = 20
TRUNCATED = " …[truncated]"
TRACEBACK_LINES = 20
# tenacity renamed wait_exponential_jitter's first wait from `initial` to `multiplier`
# (9.1) and warns on the old name; use whichever this version takes.
_FIRST_WAIT = (
    "multiplier"
    if "multiplier" in inspect.signature(tenacity.wait_exponential_jitter.__init__).parameters
    else "initial"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap, on tenacity's ``wait_exponential_jitter``.

    The wait before attempt ``n + 1`` is ``initial * multiplier ** (n - 1)`` plus up to
    ``jitter`` seconds, capped at ``maximum``.

    Args:
        max_attempts: Attempts before the job is dead-lettered (the handler's
            ``max_attempts`` and a job's own override this).
        initial: Seconds before the second attempt.
        multiplier: Growth per attempt.
        maximum: The cap, in seconds.
        jitter: Up to this many random seconds added, so retries of a burst spread out.
    """

    max_attempts: int = 5
    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 300.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts", f"must be >= 1, got {self.max_attempts}")
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ConfigurationError(
                "retry", "needs initial > 0, maximum >= initial and multiplier >= 1"
            )
        if self.jitter < 0:
            raise ConfigurationError("jitter", f"must be >= 0, got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` (from 1) failed."""
        wait = tenacity.wait_exponential_jitter(
            **{_FIRST_WAIT: self.initial},
            max=self.maximum,
            exp_base=self.multiplier,
            jitter=self.jitter,
        )
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return min(float(wait(state)), self.maximum)


DEFAULT_POLICY = RetryPolicy()


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after a failed attempt."""

    retry: bool
    reason: str | None  # why it is dead-lettered; None while it is retried


def classify(
    exc: BaseException, *, attempt: int, max_attempts: int, reason: str | None = None
) -> Verdict:
    """Decides between another attempt and the DLQ.

    Args:
        exc: What the attempt raised.
        attempt: The attempt that failed, from 1.
        max_attempts: The job's attempt limit.
        reason: A reason the caller already knows (e.g. ``HandlerMissing``).
    """
    if reason in NOT_RETRYABLE:
        return Verdict(False, reason)
    if isinstance(exc, PermanentError):
        return Verdict(False, PERMANENT)
    if isinstance(exc, ValidationError):
        return Verdict(False, VALIDATION)
    if attempt >= max_attempts:
        return Verdict(False, TIMEOUT if isinstance(exc, TimeoutError) else MAX_RETRIES)
    return Verdict(True, None)


def clean_text(text: str, limit: int) -> str:
    """Error text fit to store and send: NUL (which Postgres' jsonb and text refuse)
    written as ``\\x00``, and at most ``limit`` characters, the cut marked."""
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def attempt_error(exc: BaseException, attempt: int) -> dict[str, Any]:
    """One attempt's error as the Avro ``AttemptError`` record carried by retries and the DLQ.

    The message and traceback are cleaned (:func:`clean_text`), so a hostile or huge error
    can neither be refused by Postgres nor push a retry past the broker's message size.
    """
    lines = traceback.format_exception(exc)
    return {
        "attempt": attempt,
        "error_type": clean_text(type(exc).__name__, 200),
        "message": clean_text(str(exc) or type(exc).__name__, MESSAGE_LIMIT),
        "traceback": clean_text("".join(lines[-TRACEBACK_LINES:]), TRACEBACK_LIMIT),
        "at": dt.datetime.now(dt.UTC),
    }


def error_json(error: Mapping[str, Any], reason: str | None = None) -> dict[str, Any]:
    """An ``AttemptError`` as the JSON stored in ``jobs.last_error`` and transitions."""
    at = error["at"]
    record = {
        "type": error["error_type"],
        "message": error["message"],
        "traceback": error.get("traceback", ""),
        "attempt": error["attempt"],
        "at": at.isoformat() if isinstance(at, dt.datetime) else at,
    }
    if reason is not None:
        record["reason"] = reason
    return record


def history_with(
    errors: Sequence[Mapping[str, Any]], latest: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The error history of the attempts so far, oldest first.

    At most ``HISTORY_LIMIT`` entries: the first attempt's and the latest ones, so a long
    retry chain stays well below the broker's message size.
    """
    history = [dict(e) for e in errors] + [dict(latest)]
    if len(history) > HISTORY_LIMIT:
        history = history[:1] + history[-(HISTORY_LIMIT - 1) :]
    return history
