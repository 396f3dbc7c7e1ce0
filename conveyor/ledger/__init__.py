"""The ledger: every submitted job recorded as ``queued`` in Postgres within moments.

Workers may be hours behind a backlog; the ledger is not. It reads the job topics in its
own consumer group and bulk-inserts a ``queued`` row (and its ``queued`` transition) for
every job that has none, so ``JobStore.status`` shows a submitted job as queued, with its
place in its partition, long before a worker reaches it.

- ``service``: :class:`Ledger`, the consumer loop (run by ``conveyor ledger``, or by
  the worker);
- ``child``: :class:`LedgerProcess`, the worker's ledger in a child process;
- ``envelopes``: the cheap envelope decoder;
- ``rows``: the one statement per fetch;
- ``offsets``: the worker groups' committed offsets (queue positions, start points).
"""

from __future__ import annotations

from conveyor.ledger.child import LedgerExitedError, LedgerProcess
from conveyor.ledger.service import Ledger, LedgerStats

__all__ = ["Ledger", "LedgerExitedError", "LedgerProcess", "LedgerStats"]
