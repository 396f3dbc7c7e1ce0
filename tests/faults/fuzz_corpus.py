"""The fuzz scenario's corpus: bad messages and good jobs, built deterministically from a seed.

Every bad message is one of a few kinds, each a way real traffic goes wrong: random bytes
(empty ones and tombstones too), truncated frames, a wrong magic byte, a schema id the
registry never issued, and well-formed envelopes whose contents are hostile (no handler
for the type, a payload that is not JSON or of an unknown content type, a NUL in the
payload, handlers that fail with a NUL in the error text or a megabyte of it; a NUL in the
job type is a kind of its own). Good jobs are ``fault.effect``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from tests.faults import raw

#: Bad messages per kind in the fuzz scenario; they add up to 10,000. None of them needs
#: the registry (random bytes never start with the magic byte 0x00): unknown schema ids
#: have their own scenario, see test_fuzz.py.
KINDS = {
    "random_bytes": 3400,
    "empty_or_tombstone": 100,
    "truncated": 2000,
    "wrong_magic": 1500,
    "no_handler": 1250,
    "payload_not_json": 800,
    "unknown_content_type": 300,
    "nul_in_payload": 130,
    "nul_error": 500,
    "huge_error": 20,
}
#: Kinds kept out of ``KINDS``, each with its own scenario (see test_fuzz.py): a schema id
#: the registry never issued, and a job type holding a NUL, which Postgres refuses.
UNKNOWN_SCHEMA_ID = "unknown_schema_id"
NUL_IN_TYPE = "nul_in_type"


@dataclasses.dataclass
class Message:
    """One message of the corpus: its kind, what to write, and the job id if it has one."""

    kind: str
    key: bytes | None
    value: bytes | None
    headers: raw.Headers
    job_id: str | None = None

    @property
    def good(self) -> bool:
        """A job that must complete."""
        return self.kind == "good"

    @property
    def decodable(self) -> bool:
        """An envelope a worker can decode (good or hostile): it has a job id."""
        return self.job_id is not None


def build(
    serde: Serde, topic: str, *, good: int, seed: int, counts: Mapping[str, int] = KINDS
) -> list[Message]:
    """The corpus in the order it is written: ``counts`` bad messages of each kind and
    ``good`` good jobs, shuffled together."""
    rng = random.Random(seed)

    def encoded(job_type: str, payload: bytes, **fields: Any) -> tuple[dict[str, Any], bytes]:
        record = raw.envelope(job_type, payload, **fields)
        return record, serde.encode(JOB_ENVELOPE, topic, record)

    def job(kind: str, job_type: str, payload: bytes, **fields: Any) -> Message:
        record, value = encoded(job_type, payload, **fields)
        return Message(
            kind, record["job_id"].encode(), value, raw.job_headers(record), record["job_id"]
        )

    def noise(kind: str, value: bytes | None) -> Message:
        return Message(kind, None, value, [])

    _, template = encoded("fault.effect", b'{"n": 0}')
    makers: dict[str, Callable[[int], Message]] = {
        "random_bytes": lambda _: noise(
            "random_bytes", bytes([rng.randint(1, 255)]) + rng.randbytes(rng.randint(0, 299))
        ),
        "empty_or_tombstone": lambda n: noise("empty_or_tombstone", b"" if n % 2 else None),
        "truncated": lambda _: noise("truncated", template[: rng.randint(0, len(template) - 1)]),
        "wrong_magic": lambda _: noise("wrong_magic", bytes([rng.randint(1, 255)]) + template[1:]),
        UNKNOWN_SCHEMA_ID: lambda _: noise(
            UNKNOWN_SCHEMA_ID,
            b"\x00" + struct.pack(">I", rng.randint(10**6, 2**31 - 1)) + template[5:],
        ),
        "no_handler": lambda n: job("no_handler", f"fuzz.nohandler.{n % 7}", b"{}"),
        "payload_not_json": lambda _: job(
            "payload_not_json", "fault.hostile", rng.randbytes(rng.randint(1, 200))
        ),
        "unknown_content_type": lambda _: job(
            "unknown_content_type", "fault.hostile", b"{}", content_type="application/x-evil"
        ),
        NUL_IN_TYPE: lambda _: job(NUL_IN_TYPE, "fault\x00hostile", b"{}"),
        "nul_in_payload": lambda _: job(
            "nul_in_payload", "fault.hostile", json.dumps({"text": "a\x00b"}).encode()
        ),
        "nul_error": lambda _: job("nul_error", "fault.hostile", b'{"mode": "nul"}'),
        "huge_error": lambda _: job("huge_error", "fault.hostile", b'{"mode": "huge"}'),
    }
    corpus = [makers[kind](n) for kind, count in counts.items() for n in range(count)]
    corpus += [job("good", "fault.effect", json.dumps({"n": n}).encode()) for n in range(good)]
    rng.shuffle(corpus)
    return corpus


def kinds(corpus: list[Message]) -> Counter[str]:
    """Messages per kind."""
    return Counter(m.kind for m in corpus)
