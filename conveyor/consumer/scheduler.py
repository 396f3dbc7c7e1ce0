"""Which priority gets the next free slot: smooth weighted round-robin.

A worker serving several priorities shares its concurrency slots between them by weight
(4:3:2:1 for critical, high, normal, low) instead of strictly by rank, so a flood of
critical jobs slows low ones down but never stops them.

The algorithm is nginx's smooth weighted round-robin. Each priority has a ``current``
credit, zero at the start. On every pick, each priority with ready jobs adds its weight to
its credit; the one with the highest credit wins (ties go to the higher weight, then to
the first declared) and gives back the sum of the weights that took part. Priorities with
nothing ready sit the pick out, credit unchanged.

What that guarantees:

- With the same priorities ready on every pick, from the start, every window of
  ``sum(their weights)`` consecutive picks gives each exactly its weight's worth of picks,
  interleaved rather than in runs (4:3:2:1 gives ``critical, high, normal, critical,
  high, low, critical, normal, high, critical`` and repeats).
- The credits stay bounded whatever the ready sets, so no ready priority starves. When the
  ready set keeps changing, the longest run of picks that pass over a continuously ready
  priority can exceed ``sum(weights) - 1``: for 4:3:2:1 it is 3, 5, 7 and 14 picks (found
  by exhaustive search of the reachable credit states), against 2, 3, 4 and 9 with all of
  them always ready.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["WeightedScheduler"]


class WeightedScheduler:
    """Picks, among the priorities with ready jobs, which one runs next.

    Args:
        weights: Priority to weight, in declaration order (which breaks ties between equal
            weights). Weights are positive integers.

    Raises:
        ValueError: If ``weights`` is empty or a weight is not a positive integer.
    """

    __slots__ = ("_current", "_weights")

    def __init__(self, weights: Mapping[str, int]) -> None:
        """Validates the weights and starts every credit at zero."""
        if not weights:
            raise ValueError("weights: at least one priority is needed")
        for priority, weight in weights.items():
            # bool is an int subclass; True as a weight is a mistake, not 1.
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(
                    f"weights: the weight of {priority!r} must be a positive integer, "
                    f"got {weight!r}"
                )
        self._weights = dict(weights)
        self._current = dict.fromkeys(self._weights, 0)

    def pick(self, ready: Collection[str]) -> str | None:
        """Chooses the priority that gets the next free slot.

        Args:
            ready: The priorities that have ready jobs now.

        Returns:
            One of ``ready``, or None if ``ready`` is empty.

        Raises:
            ValueError: If ``ready`` names a priority without a weight.
        """
        unknown = set(ready).difference(self._weights)
        if unknown:
            raise ValueError(f"priorities without a weight: {sorted(unknown)}")
        best: str | None = None
        total = 0
        for priority, weight in self._weights.items():
            if priority not in ready:
                continue
            self._current[priority] += weight
            total += weight
            # Strictly greater keeps the earlier-declared one on a full tie.
            if best is None or (self._current[priority], weight) > (
                self._current[best],
                self._weights[best],
            ):
                best = priority
        if best is not None:
            self._current[best] -= total
        return best
