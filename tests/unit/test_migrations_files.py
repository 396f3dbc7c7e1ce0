"""The migration files shipped in the package, and how the loader reads them."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import migrations
from conveyor.errors import MigrationError

MakePackage = Callable[[dict[str, str]], str]

_COMMENT_RE = re.compile(r"--[^\n]*")
_LITERAL_RE = re.compile(r"'(?:[^']|'')*'")


def _code_only(sql: str) -> str:
    """The SQL without comments and string literals, where only real names remain."""
    return _LITERAL_RE.sub("''", _COMMENT_RE.sub("", sql))


@pytest.fixture
def make_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePackage]:
    """Builds an importable package holding the given files; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(files: dict[str, str]) -> str:
        name = f"fake_migrations_{uuid.uuid4().hex[:8]}"
        folder = tmp_path / name
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for filename, text in files.items():
            (folder / filename).write_text(text)
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


def test_shipped_migrations_load_in_number_order_with_unique_numbers() -> None:
    loaded = migrations.load_migrations()

    versions = [m.version for m in loaded]
    assert versions == sorted(set(versions))
    assert loaded[0].name == "0001_jobs"
    assert loaded[0].filename == "0001_jobs.sql"
    for migration in loaded:
        assert migration.name.startswith(f"{migration.version:04d}_")
        assert migration.sql.strip(), f"{migration.filename} is empty"


def test_jobs_migration_creates_every_table_the_mission_names() -> None:
    sql = _code_only(migrations.load_migrations()[0].sql)

    created = set(re.findall(r"CREATE TABLE (\w+)", sql))

    assert {"jobs", "job_transitions", "job_dlq"} <= created


def test_jobs_migration_declares_every_dlq_error_reason() -> None:
    sql = migrations.load_migrations()[0].sql
    reasons = (
        "MaxRetries",
        "Validation",
        "HandlerMissing",
        "Deserialization",
        "Permanent",
        "Timeout",
    )

    missing = [r for r in reasons if f"'{r}'" not in sql]

    assert missing == []


def test_no_migration_names_a_schema_or_manages_its_own_transaction() -> None:
    """The runner owns the schema and the transaction; files that did would break isolation."""
    for migration in migrations.load_migrations():
        code = _code_only(migration.sql)
        assert re.search(r"\bconveyor\s*\.", code, re.IGNORECASE) is None, migration.filename
        assert re.search(r"\bCREATE\s+SCHEMA\b", code, re.IGNORECASE) is None, migration.filename
        assert re.search(r"\bSET\s+search_path\s+(TO|=)", code, re.IGNORECASE) is None
        statements = re.findall(r"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", code, re.I | re.M)
        assert statements == [], migration.filename


def test_loader_sorts_by_number_and_ignores_other_files(make_package: MakePackage) -> None:
    package = make_package(
        {
            "0010_c.sql": "SELECT 3;",
            "0002_b.sql": "SELECT 2;",
            "0001_a.sql": "SELECT 1;",
            "README.txt": "not a migration",
        }
    )

    loaded = migrations.load_migrations(package)

    assert [(m.version, m.name, m.sql) for m in loaded] == [
        (1, "0001_a", "SELECT 1;"),
        (2, "0002_b", "SELECT 2;"),
        (10, "0010_c", "SELECT 3;"),
    ]


def test_loader_refuses_two_files_with_the_same_number(make_package: MakePackage) -> None:
    package = make_package({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"})

    with pytest.raises(MigrationError) as caught:
        migrations.load_migrations(package)

    message = str(caught.value)
    assert "0001_a.sql" in message
    assert "0001_b.sql" in message


def test_loader_refuses_a_misnamed_sql_file(make_package: MakePackage) -> None:
    package = make_package({"0001_a.sql": "SELECT 1;", "2_b.sql": "SELECT 2;"})

    with pytest.raises(MigrationError, match=r"2_b\.sql.*NNNN_name\.sql"):
        migrations.load_migrations(package)
