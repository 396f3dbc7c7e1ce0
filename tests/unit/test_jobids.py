"""Job ids are UUIDv7: time-ordered, so new jobs land at the right edge of Postgres' indexes."""

from __future__ import annotations

import time
import uuid

from conveyor.consumer.job import is_uuid_text
from conveyor.producer.jobids import new_job_id


def test_a_job_id_is_a_uuid7_in_postgres_text_form_stamped_with_its_time() -> None:
    before = time.time_ns() // 1_000_000
    job_id = new_job_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(job_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert is_uuid_text(job_id)  # what the worker and Postgres print, unchanged
    assert before <= parsed.int >> 80 <= after


def test_ids_made_one_after_another_sort_in_that_order_and_never_repeat() -> None:
    ids = [new_job_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    # The first 60 bits are the time (milliseconds, then the fraction of one); the text
    # sorts as the number does, as Postgres' uuid ordering does.
    stamps = [uuid.UUID(i).int >> 64 & ~(0xF << 12) for i in ids]
    assert stamps == sorted(stamps)
    assert [uuid.UUID(i) for i in sorted(ids)] == sorted(uuid.UUID(i) for i in ids)
    assert len(set(stamps)) > len(ids) // 2  # sub-millisecond order, not one stamp per ms
