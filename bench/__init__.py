"""conveyor's benchmark harness: ``python -m bench`` (see ``bench/__main__.py``).

Modules: ``stack`` (services and a fresh workspace per scenario), ``sizes`` (full and
quick), ``scenarios/`` (one module per scenario), ``contenders`` (conveyor's worker and
the two raw loops as child processes), ``rawloop`` (consume and commit) and
``rawdurable`` (the same plus conveyor's status rows, one statement per fetch),
``celery_app``/``celery_runner`` and ``dramatiq_app``/``dramatiq_runner`` (the Redis
baselines, sharing ``redisrun`` and ``redisrecord``), ``apps`` (the benchmark's conveyor
worker), ``jobs`` (submitting jobs and reading their timings from Postgres), ``procs``
and ``watch`` (CPU and memory of child processes), ``machine``, ``report`` and
``charts`` (what BENCHMARKS.md shows), and ``profile`` with ``budget`` (``python -m
bench.profile``: the worker's per-job CPU by stage, with py-spy).
"""
