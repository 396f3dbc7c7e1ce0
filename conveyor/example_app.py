"""A worker app of the example handlers, for ``conveyor worker conveyor.example_app:worker``.

The Docker image and the deploy manifests run it, so a fresh deployment has something
to process; a real deployment names its own app module instead.
"""

from __future__ import annotations

from conveyor.examples import build_worker
from conveyor.settings import Settings

worker = build_worker(Settings.from_env())
