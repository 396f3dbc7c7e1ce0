"""conveyor's benchmark harness: ``python -m bench`` (see ``bench/__main__.py``).

Modules: ``stack`` (services and a fresh workspace per scenario), ``sizes`` (full and
quick), ``scenarios/`` (one module per scenario), ``contenders`` (conveyor's worker and
the raw Kafka loop as child processes), ``rawloop``, ``celery_app`` and
``celery_runner`` (the Celery baseline), ``apps`` (the benchmark's conveyor worker),
``jobs`` (submitting jobs and reading their timings from Postgres), ``procs`` and
``watch`` (CPU and memory of child processes), ``machine`` and ``report`` (what
BENCHMARKS.md shows).
"""
