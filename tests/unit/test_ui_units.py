"""The parts of `conveyor ui` that need no services: filters, cursors, payloads, safety checks."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from conveyor.cli import main
from conveyor.errors import ConfigurationError
from conveyor.settings import Settings
from conveyor.ui import queries, server
from conveyor.ui.deadletters import DlqFilter
from conveyor.ui.security import Credentials
from conveyor.ui.state import UiOptions


def test_ui_secrets_are_masked_in_the_settings_repr() -> None:
    settings = Settings.from_env(
        {
            "CONVEYOR_UI_TOKEN": "tok-secret",
            "CONVEYOR_UI_DATABASE_URL": "postgresql://ui:pw-secret@db/app",
        }
    )
    assert settings.ui_token is not None
    assert settings.ui_token.get_secret_value() == "tok-secret"
    assert "tok-secret" not in repr(settings)
    assert "pw-secret" not in repr(settings)


def test_a_ui_database_url_that_is_not_postgres_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="ui_database_url"):
        Settings(ui_database_url="mysql://x@db/app")


@pytest.mark.parametrize("auth", ["nopassword", ":pw", "user:"])
def test_auth_must_be_user_colon_password(auth: str) -> None:
    with pytest.raises(ConfigurationError, match="user:password"):
        Credentials.parse(auth, None)


def test_a_non_loopback_host_needs_credentials_unless_told_otherwise() -> None:
    anonymous = UiOptions()
    authed = UiOptions(credentials=Credentials.parse("a:b", None))
    with pytest.raises(ConfigurationError, match="reachable from other machines"):
        server.check_exposure("0.0.0.0", anonymous, allow_anonymous=False)
    server.check_exposure("0.0.0.0", authed, allow_anonymous=False)
    server.check_exposure("0.0.0.0", anonymous, allow_anonymous=True)
    server.check_exposure("127.0.0.1", anonymous, allow_anonymous=False)
    assert [server.is_loopback(h) for h in ("localhost", "::1", "10.0.0.1")] == [
        True,
        True,
        False,
    ]


def test_the_cli_refuses_an_exposed_anonymous_ui_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("CONVEYOR_")]:
        monkeypatch.delenv(var)
    assert main(["ui", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("conveyor: error: invalid setting --host: 0.0.0.0 is reachable")


def test_a_cursor_round_trips_and_a_forged_one_is_a_query_error() -> None:
    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    cursor = queries.encode_cursor(at, "4f1c")
    assert queries.decode_cursor(cursor) == (at, "4f1c")
    assert queries.decode_cursor(None) is None
    with pytest.raises(queries.QueryError, match="malformed"):
        queries.decode_cursor("bm90IGpzb24")


def test_job_filters_ignore_empty_fields_and_name_a_bad_one() -> None:
    f = queries.JobFilter.from_params({"type": " email.send ", "key": "", "since": "2026-12-01"})
    assert (f.type, f.key) == ("email.send", None)
    assert f.since == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert f.as_params() == {"type": "email.send", "since": "2026-12-01T00:00:00+00:00"}
    with pytest.raises(queries.QueryError, match="job_id must be a UUID"):
        queries.JobFilter.from_params({"job_id": "42"})
    with pytest.raises(queries.QueryError, match="show must be one of"):
        DlqFilter.from_params({"show": "some"})


def test_where_clauses_carry_values_as_parameters_never_as_sql() -> None:
    f = queries.JobFilter.from_params({"type": "x'; DROP TABLE jobs; --", "tenant": "acme"})
    where = queries._job_where(f)
    assert where.sql() == "type = $1 AND tenant_id = $2"
    assert where.args == ["x'; DROP TABLE jobs; --", "acme"]


def test_payloads_decode_as_pretty_json_then_text_then_hex() -> None:
    as_json = queries.decode_payload(b'{"b": 1, "a": [1]}', "application/json")
    as_text = queries.decode_payload(b"<script>", "text/plain")
    as_hex = queries.decode_payload(b"\x00\xff\x10", "application/avro")
    assert as_json["encoding"] == "json"
    assert as_json["text"] == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert (as_text["encoding"], as_text["text"]) == ("text", "<script>")
    assert as_hex["encoding"] == "hex"
