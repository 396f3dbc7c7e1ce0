"""What keeps ``conveyor ui`` safe by default: authentication and CSRF tokens.

- **Authentication.** With ``--auth user:password`` the UI asks for HTTP basic
  credentials; with ``CONVEYOR_UI_TOKEN`` it also accepts ``Authorization: Bearer
  <token>``. Anything else gets 401. Comparisons take constant time. Without either, the
  UI serves only a loopback address (``conveyor ui`` refuses another host).
- **CSRF.** Every POST must carry the token of the ``conveyor_csrf`` cookie (a random
  value set on the first GET, ``SameSite=Strict``, ``HttpOnly``) in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field. Pages embed it; scripts read it
  from ``GET /api/csrf``. A POST without it, or with another value, gets 403. A page of
  another site can neither read the cookie nor the token, so it cannot forge an action.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import secrets
import urllib.parse

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.errors import ConfigurationError
from conveyor.settings import Secret

CSRF_COOKIE = "conveyor_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
REALM = "conveyor"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Who may use the UI: a basic user and password, a bearer token, or both.

    Args:
        basic: ``user:password``.
        token: The bearer token.
    """

    basic: Secret | None = None
    token: Secret | None = None

    @classmethod
    def parse(cls, auth: str | None, token: Secret | None) -> Credentials:
        """Builds credentials from ``--auth user:password`` and the token setting.

        Raises:
            ConfigurationError: ``auth`` has no colon, or an empty user or password.
        """
        if auth is not None:
            user, sep, password = auth.partition(":")
            if not sep or not user or not password:
                raise ConfigurationError("--auth", "expected user:password")
        if token is not None and not token.get_secret_value():
            token = None
        return cls(basic=None if auth is None else Secret(auth), token=token)

    @property
    def required(self) -> bool:
        """Whether requests must authenticate."""
        return self.basic is not None or self.token is not None

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value matches these credentials."""
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token is not None:
            return _same(value, self.token.get_secret_value())
        if scheme == "basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(decoded, self.basic.get_secret_value())
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class AuthMiddleware:
    """Answers 401 to any request whose credentials do not match.

    Args:
        app: The application behind it.
        credentials: What is accepted.
    """

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self._app = app
        self._credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._credentials.accepts(
            Headers(scope=scope).get("authorization")
        ):
            challenge = {}
            if self._credentials.basic is not None:
                challenge["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            elif self._credentials.token is not None:
                challenge["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
            response = PlainTextResponse("authentication required\n", 401, headers=challenge)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def csrf_token(request: Request) -> tuple[str, bool]:
    """The request's CSRF token, and whether it is new (so the cookie must be set)."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and len(token) >= 32:
        return token, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: object, token: str, *, secure: bool) -> None:
    """Sets the CSRF cookie on ``response`` (a Starlette ``Response``)."""
    response.set_cookie(  # type: ignore[attr-defined]
        CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/"
    )


async def csrf_ok(request: Request) -> bool:
    """Whether a POST carries the token of its CSRF cookie, in the header or the form."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        given = (await form_fields(request)).get(CSRF_FIELD)
    return given is not None and _same(given, cookie)


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form body (what the pages post); empty for other bodies.

    Parsed here rather than with ``request.form()``, which needs python-multipart for a
    format the pages never send.
    """
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
