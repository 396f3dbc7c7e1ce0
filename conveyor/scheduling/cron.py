"""Cron expressions in a time zone: validation and the ticks of a recurring schedule.

Parsing and stepping are cronsim's (the cron evaluator behind Healthchecks.io), which
walks wall-clock time in the schedule's zone with Debian cron's DST rules: a time skipped
by a spring-forward runs once at the first instant after the gap (02:30 becomes 03:00),
a time repeated by a fall-back runs once (at its first occurrence), and schedules that
fire every hour or more often keep firing at every real instant through both.

Pure functions of their arguments (no clock of their own), so ticks across a DST change
are tested with fixed instants.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

from cronsim import CronSim, CronSimError

from conveyor.errors import ScheduleError

CATCH_UP = ("none", "last", "all")
DEFAULT_CATCH_UP = "last"
#: How late a tick may be released and still count as on time for ``catch_up="none"``.
ON_TIME_GRACE = dt.timedelta(seconds=60)
#: Most missed ticks submitted at once by ``catch_up="all"`` (the oldest are dropped).
MAX_CATCH_UP = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """A validated cron expression in a time zone.

    Build it with :func:`parse`.

    Args:
        expression: Five fields: minute, hour, day of month, month, day of week.
        timezone: An IANA zone name, like ``Europe/Paris``.
    """

    expression: str
    timezone: str

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The zone the expression's wall-clock times are read in."""
        return zoneinfo.ZoneInfo(self.timezone)

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``instant`` (aware), in UTC."""
        start = instant.astimezone(self.zone)
        return next(iter(CronSim(self.expression, start))).astimezone(dt.UTC)

    def ticks(self, first: dt.datetime, until: dt.datetime) -> tuple[list[dt.datetime], int]:
        """Ticks from ``first`` (itself a tick) up to ``until``, both included, in UTC.

        Returns:
            The last ``MAX_CATCH_UP`` of them, and how many there were in all.
        """
        if first > until:
            return [], 0
        found = [first.astimezone(dt.UTC)]
        total = 1
        stepper = CronSim(self.expression, first.astimezone(self.zone))
        for tick in stepper:
            at = tick.astimezone(dt.UTC)
            if at > until:
                break
            found.append(at)
            total += 1
            if len(found) > MAX_CATCH_UP:
                del found[0]
        return found, total


def parse(expression: str, timezone: str) -> Cron:
    """Validates a cron expression and a time zone.

    Raises:
        ScheduleError: The expression is not valid cron, or the zone is unknown.
    """
    if not isinstance(timezone, str) or not timezone:
        raise ScheduleError(f"time zone must be an IANA name like 'Europe/Paris', got {timezone!r}")
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"unknown time zone {timezone!r}; use an IANA name like 'Europe/Paris' or 'UTC'"
        ) from exc
    if not isinstance(expression, str):
        raise ScheduleError(f"cron expression must be a string, got {expression!r}")
    try:
        CronSim(expression, dt.datetime.now(zone))
    except CronSimError as exc:
        raise ScheduleError(
            f"invalid cron expression {expression!r}: {exc}; expected five fields "
            "(minute hour day-of-month month day-of-week), like '0 8 * * *'"
        ) from exc
    return Cron(expression, timezone)


def check_catch_up(catch_up: str) -> str:
    """Returns ``catch_up`` if it is one of ``CATCH_UP``.

    Raises:
        ScheduleError: It is not.
    """
    if catch_up not in CATCH_UP:
        raise ScheduleError(f"catch_up must be one of {', '.join(CATCH_UP)}, got {catch_up!r}")
    return catch_up


def due_ticks(
    cron: Cron, next_fire_at: dt.datetime, now: dt.datetime, catch_up: str
) -> tuple[list[dt.datetime], dt.datetime]:
    """Which ticks to submit now, and the schedule's next fire time after them.

    Args:
        cron: The schedule's expression and zone.
        next_fire_at: The stored next tick (every tick before it was handled).
        now: The current time.
        catch_up: For ticks missed while nothing ran: ``all`` submits each (at most
            ``MAX_CATCH_UP``), ``last`` only the latest, ``none`` only a tick that is
            on time (at most ``ON_TIME_GRACE`` late).

    Returns:
        The ticks to submit, oldest first, and the first tick after ``now``.
    """
    ticks, _total = cron.ticks(next_fire_at, now)
    following = cron.next_after(now)
    if not ticks:
        return [], next_fire_at
    if catch_up == "all":
        return ticks, following
    latest = ticks[-1]
    if catch_up == "last" or now - latest <= ON_TIME_GRACE:
        return [latest], following
    return [], following


__all__ = [
    "CATCH_UP",
    "DEFAULT_CATCH_UP",
    "MAX_CATCH_UP",
    "ON_TIME_GRACE",
    "Cron",
    "check_catch_up",
    "due_ticks",
    "parse",
]
