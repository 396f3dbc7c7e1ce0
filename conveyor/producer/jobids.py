"""Job ids: UUIDv7 (RFC 9562), ordered by the time they were made.

Every job's row is keyed by its id (``jobs.job_id``, and ``job_transitions`` by
``(job_id, id)``). Random ids (UUIDv4) put each new job on a random leaf of those
B-trees: the pages a burst of jobs touches are spread over the whole index, each is
written to the WAL in full after every checkpoint, and once the index outgrows memory
each insert reads a page from disk. Time-ordered ids put new jobs at the right edge of
the index, where the last jobs went, as a ``bigserial`` key would, while staying unique
without any coordination between producers.

Layout (RFC 9562, section 5.7, with section 6.2's method 3 for the 12 ``rand_a`` bits):
48 bits of Unix milliseconds, the version (7), 12 bits of the fraction of that
millisecond (so ids made one after another sort in that order, to about a quarter of a
microsecond), the variant, and 62 random bits from the OS.

A deduplicated job keeps its deterministic UUIDv5 (``dedupe_job_id``): its id must be the
same on every submit, whenever that is.
"""

from __future__ import annotations

import os
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_NS_PER_MS = 1_000_000


def new_job_id() -> str:
    """A new UUIDv7, in the text form Postgres prints (lower-case, hyphenated)."""
    ms, fraction = divmod(time.time_ns(), _NS_PER_MS)
    value = (
        (ms << 80)
        | _VERSION_7
        | ((fraction << 12) // _NS_PER_MS) << 64
        | _VARIANT_RFC
        | int.from_bytes(os.urandom(8)) >> 2
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


__all__ = ["new_job_id"]
