"""``conveyor ui``: the operator web UI and its JSON API.

Server-rendered Jinja2 pages (autoescaped) with htmx and a small script for live
updates over Server-Sent Events; ``/api/`` returns the same data as JSON. Module map:

- ``app``: the Starlette application, security headers, error answers;
- ``pages`` and ``api``: the HTML routes, and the JSON, stream and action routes;
- ``queries``, ``overview``, ``deadletters``, ``cluster``: every read either serves;
- ``security``: basic/bearer authentication and CSRF tokens;
- ``tenancy``: limiting the UI to one tenant through row-level security;
- ``server``: uvicorn, in the foreground or beside ``conveyor dev``.
"""

from __future__ import annotations

from conveyor.ui.app import create_app
from conveyor.ui.state import UiOptions

__all__ = ["UiOptions", "create_app"]
