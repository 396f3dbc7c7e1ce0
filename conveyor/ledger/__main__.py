"""``python -m conveyor.ledger``: the worker's ledger child (``conveyor.ledger.child``)."""

from __future__ import annotations

import sys

from conveyor.ledger.child import main

sys.exit(main())
