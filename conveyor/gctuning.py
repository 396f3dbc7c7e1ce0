"""The cyclic garbage collector while a worker or a ledger runs.

Every full collection walked every object the process held: modules, clients and pools
made at start-up (a 116 ms pause on the loop every job waits for), and the thousands of
jobs a worker keeps buffered. And CPython collects its youngest generation after every
700 net container allocations, while a worker allocates a few dozen containers per job
(futures, tasks, closures, the job's dicts): under load it collected about 70 times a
second. Measured with ``gc.callbacks`` over 50,000 no-op jobs, 2.35 of the worker's
8.8 CPU seconds went to the collector, with start-up already frozen; with the youngest
generation's threshold at 50,000 it was about 0.35 s (ARCHITECTURE.md, "The garbage
collector").

So for the run, :func:`tuned` freezes what start-up made (after one collection, so no
garbage is kept) and sets ``Settings.gc_threshold`` (``CONVEYOR_GC_THRESHOLD``, default
50,000, 20, 20; CPython's is 700, 10, 10). Reference counting still frees almost
everything at once; only cyclic garbage waits longer for a collection. The price is
memory: the worker's peak RSS over 100,000 jobs was 165 MB against 130 MB at CPython's
thresholds (``10000,20,20`` gave 126-130 MB for 1.5 s of collector time). Both are
process-wide, so an app that runs a ``Worker`` inside a process of its own gets them for
the worker's run, and its own settings back at the stop.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def tuned(threshold: Sequence[int]) -> Iterator[None]:
    """Freezes what start-up made and sets the collector's three thresholds for the
    block; unfreezes and puts the thresholds before it back after."""
    first, second, third = threshold
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(first, second, third)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


__all__ = ["tuned"]
