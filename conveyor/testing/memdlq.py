"""The in-process DLQ: the ``job_dlq`` rows the sink would insert, kept in memory."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from conveyor.consumer import dlq_rows
from conveyor.dlq import DlqEntry
from conveyor.errors import DlqEntryNotFound


class MemoryDlq:
    """Dead jobs as ``DlqEntry`` rows, numbered from 1 in the order they died."""

    def __init__(self) -> None:
        self._entries: list[DlqEntry] = []

    def add(self, record: Mapping[str, Any]) -> DlqEntry:
        """Stores one decoded DLQ record; returns its entry."""
        entry = _entry(len(self._entries) + 1, record)
        self._entries.append(entry)
        return entry

    def list(
        self, *, type: str | None = None, tenant: str | None = None, pending_only: bool = True
    ) -> list[DlqEntry]:
        """Entries, oldest first, filtered as ``JobStore.dlq_list`` filters them."""
        return [
            entry
            for entry in self._entries
            if (type is None or entry.type == type)
            and (tenant is None or entry.tenant_id == tenant)
            and (not pending_only or entry.replayed_at is None)
        ]

    def show(self, entry_id: int) -> DlqEntry:
        """One entry.

        Raises:
            DlqEntryNotFound: No entry has this id.
        """
        for entry in self._entries:
            if entry.id == entry_id:
                return entry
        raise DlqEntryNotFound(entry_id)

    def mark_replayed(self, entry: DlqEntry, at: dt.datetime) -> None:
        """Sets the entry's ``replayed_at``."""
        self._entries[self._entries.index(entry)] = dataclasses.replace(entry, replayed_at=at)


def _entry(entry_id: int, record: Mapping[str, Any]) -> DlqEntry:
    """The ``job_dlq`` row the sink would insert for one DLQ record."""
    dead_at = record["dead_at"]
    if isinstance(dead_at, int):
        dead_at = dt.datetime.fromtimestamp(dead_at / 1000, dt.UTC)
    max_attempts = record.get("max_attempts")
    row = {
        "id": entry_id,
        "original_job_id": record.get("job_id"),
        "tenant_id": record.get("tenant_id"),
        "type": record.get("type"),
        "payload": record["payload"],
        "content_type": record.get("content_type"),
        "error_reason": record["error_reason"],
        "attempts": record["attempts"],
        "error_history": dlq_rows.history_json(record.get("error_history") or []),
        "dlq_at": dead_at,
        "replayed_at": None,
        "trace_id": record.get("trace_id"),
        "source_topic": record.get("source_topic"),
        "source_partition": record.get("source_partition"),
        "source_offset": record.get("source_offset"),
        "key": record.get("key"),
        "priority": record.get("priority"),
        "event_published_at": dead_at if record.get("job_id") is not None else None,
        "batch_id": None if record.get("batch_id") is None else str(record["batch_id"]),
        "dedupe_key": record.get("dedupe_key"),
        "max_attempts": None if max_attempts is not None and max_attempts < 1 else max_attempts,
        "duration": record.get("duration"),
        "submitted_at": record.get("submitted_at"),
    }
    return DlqEntry.from_row(row)
