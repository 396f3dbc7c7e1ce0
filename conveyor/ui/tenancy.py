"""Limiting ``conveyor ui`` to one tenant through Postgres row-level security.

``conveyor ui --tenant acme`` connects with ``CONVEYOR_UI_DATABASE_URL``, a non-owner
role, and sets ``conveyor.tenant_id`` on every connection it opens (a startup parameter,
so it holds for the whole session). The policies of ``0001_jobs.sql`` then show that role
only acme's jobs, history and DLQ rows, and any write it attempts for another tenant
fails. The table owner, superusers and ``BYPASSRLS`` roles would see every tenant, so
:func:`check_role` refuses them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor import db
from conveyor.errors import ConfigurationError
from conveyor.settings import Settings

TENANT_SETTING = "conveyor.tenant_id"

_ROLE = """
SELECT r.rolsuper OR r.rolbypassrls AS bypasses,
       coalesce(pg_has_role(current_user, t.tableowner, 'MEMBER'), false) AS owns
FROM pg_roles r
LEFT JOIN pg_tables t ON t.schemaname = $1 AND t.tablename = 'jobs'
WHERE r.rolname = current_user
"""


def scoped(settings: Settings, tenant: str) -> Settings:
    """Settings whose Postgres connections are the UI role's, limited to ``tenant``.

    Raises:
        ConfigurationError: ``CONVEYOR_UI_DATABASE_URL`` is not set, or the tenant is empty.
    """
    if not tenant.strip():
        raise ConfigurationError("--tenant", "must not be empty")
    if settings.ui_database_url is None:
        raise ConfigurationError(
            "ui_database_url",
            "--tenant needs CONVEYOR_UI_DATABASE_URL, a non-owner role that row-level "
            "security applies to",
        )
    parts = urlsplit(settings.ui_database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != TENANT_SETTING]
    query.append((TENANT_SETTING, tenant))
    return settings.replace(database_url=urlunsplit(parts._replace(query=urlencode(query))))


async def check_role(settings: Settings) -> None:
    """Refuses a role that row-level security does not apply to.

    Raises:
        ConfigurationError: The role owns the tables, is a superuser or bypasses RLS.
        DatabaseUnavailableError: Postgres cannot be reached.
    """
    conn = await db.connect(settings)
    try:
        row = await conn.fetchrow(_ROLE, settings.database_schema)
    finally:
        await conn.close()
    if row is None or row["bypasses"] or row["owns"]:
        raise ConfigurationError(
            "ui_database_url",
            "the role of CONVEYOR_UI_DATABASE_URL owns conveyor's tables, is a superuser or "
            "bypasses row-level security, so --tenant would not limit what it sees; use a "
            "non-owner role (README, Database)",
        )
