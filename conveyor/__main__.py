"""``python -m conveyor`` runs the CLI."""

from __future__ import annotations

import sys

from conveyor.cli import main

sys.exit(main())
