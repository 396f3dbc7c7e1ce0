"""The ``conveyor ui`` application: pages, the JSON API and their protections.

``create_app(settings, options)`` returns a Starlette ASGI app that opens its Postgres
pool on startup and closes it on shutdown. Every response carries a strict Content
Security Policy (scripts and styles from ``/static`` only, no inline script), so even a
value that escaped escaping could not run; and ``X-Frame-Options: DENY``, so no other
site can frame the UI to trick a click.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.errors import ConveyorError
from conveyor.settings import Settings
from conveyor.ui import api, pages
from conveyor.ui.security import AuthMiddleware
from conveyor.ui.state import UiOptions, UiState

log = logging.getLogger("conveyor.ui")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self._app(scope, receive, send_with_headers)


async def _conveyor_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConveyorError)
    status = api.error_status(exc)
    if status == 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    if request.url.path.startswith("/api/"):
        return api.error(status, str(exc))
    return pages.render(request, "error.html", status, message=str(exc))


def create_app(settings: Settings, options: UiOptions | None = None) -> Starlette:
    """Builds the UI application.

    Args:
        settings: Where Postgres and Kafka are; when ``options.tenant`` is set, settings
            that connect as the tenant's non-owner role (``conveyor.ui.tenancy.scoped``).
        options: Authentication, read-only mode and tenant.

    Returns:
        The ASGI app; its lifespan opens and closes the connections.
    """
    ui = UiState(settings, options or UiOptions())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await ui.open()
        try:
            yield
        finally:
            await ui.close()

    app = Starlette(
        routes=[*api.routes(), *pages.routes()],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(AuthMiddleware, credentials=ui.options.credentials),
        ],
        exception_handlers={ConveyorError: _conveyor_error},
        lifespan=lifespan,
    )
    app.state.ui = ui
    return app
