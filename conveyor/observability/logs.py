"""Logging with job fields: text lines, or one JSON object per line (``CONVEYOR_LOG_JSON``).

While a job runs, every log record made in its task (the worker's and the handler's
own, through ``ctx.logger`` or any logger) carries ``job_id``, ``job_type``,
``priority`` and ``attempt``; with a recording span, also ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries whose INFO lines (every HTTP request, every group join) would bury
#: conveyor's own; below DEBUG they log warnings and errors only.
CHATTY_LIBRARIES = ("aiokafka", "httpx", "httpx2", "httpcore")

#: A job's fields, or what makes them when a record is logged (``bind_job_fields``).
Fields = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
_JOB_FIELDS: contextvars.ContextVar[Fields | None] = contextvars.ContextVar(
    "conveyor_job_fields", default=None
)


@contextlib.contextmanager
def job_fields(**fields: Any) -> Iterator[None]:
    """Adds fields to every log record made in this context (and tasks it starts)."""
    token = _JOB_FIELDS.set(fields)
    try:
        yield
    finally:
        _JOB_FIELDS.reset(token)


def bind_job_fields(fields: Callable[[], Mapping[str, Any]]) -> contextvars.Token[Fields | None]:
    """Like :func:`job_fields`, but ``fields()`` makes them only when a record is logged.

    The worker binds every job's fields, and most jobs log nothing: a context manager
    and a dict per job cost it 4 µs of its one core. Undo with :func:`unbind_job_fields`.
    """
    return _JOB_FIELDS.set(fields)


def unbind_job_fields(token: contextvars.Token[Fields | None]) -> None:
    """Restores the fields that :func:`bind_job_fields` replaced."""
    _JOB_FIELDS.reset(token)


def current_fields() -> dict[str, Any]:
    """The job fields and trace ids of the current context."""
    bound = _JOB_FIELDS.get()
    fields = dict((bound() if callable(bound) else bound) or {})
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class JobFieldsFilter(logging.Filter):
    """Puts the current job fields on each record as ``record.job_fields``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_fields = current_fields()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, job fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "job_fields", None) or current_fields())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with ``key=value`` job fields appended when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "job_fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def partitions(assigned: Iterable[Any], *, strip: str = "") -> str:
    """Summarises (topic, partition) pairs per topic: ``jobs.retry.5s: 4 partitions``.

    Args:
        assigned: aiokafka ``TopicPartition``s (anything with ``topic`` and ``partition``).
        strip: A prefix to drop from topic names, such as ``"<prefix>."``.
    """
    counts = Counter(str(tp.topic).removeprefix(strip) for tp in assigned)
    if not counts:
        return "no partitions"
    return ", ".join(
        f"{topic}: {n} partition{'s' if n != 1 else ''}" for topic, n in sorted(counts.items())
    )


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Sends the root logger's records to stderr, as text or JSON lines, with job fields.

    Unless ``level`` is DEBUG, the libraries in ``CHATTY_LIBRARIES`` log at WARNING.
    """
    handler = logging.StreamHandler()
    handler.addFilter(JobFieldsFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    libraries = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
