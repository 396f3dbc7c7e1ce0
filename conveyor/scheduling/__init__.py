"""Scheduling: delayed and ``run_at`` jobs held in Postgres until due, and cron schedules.

See :mod:`conveyor.scheduling.service` for the service and ARCHITECTURE.md, section
"Scheduling (conveyor/scheduling)", for the design and the measurements behind it.
"""
