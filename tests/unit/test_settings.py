"""Settings: keyword and environment construction, validation, secret masking."""

from __future__ import annotations

import logging

import pytest

from conveyor.errors import ConfigurationError
from conveyor.settings import Secret, Settings, explicitly_set, format_duration, parse_duration


def test_defaults_follow_the_mission() -> None:
    """Defaults: prefix conveyor, unit 2, retry ladder 5s/30s/5m, 7 days retention."""
    s = Settings()
    assert (s.topic_prefix, s.partition_unit) == ("conveyor", 2)
    assert s.retry_delays == (5.0, 30.0, 300.0)
    assert s.job_retention_days == 7
    assert s.max_payload_bytes == 1024 * 1024


def test_from_env_reads_conveyor_variables_and_parses_types() -> None:
    env = {
        "CONVEYOR_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "CONVEYOR_DATABASE_URL": "postgresql://app:pw@db:5432/jobs",
        "CONVEYOR_SCHEMA_REGISTRY_URL": "http://registry:8081",
        "CONVEYOR_TOPIC_PREFIX": "acme",
        "CONVEYOR_PARTITION_UNIT": "3",
        "CONVEYOR_METRICS_PORT": "9100",
        "CONVEYOR_RETRY_DELAYS": "1s,10s,2m",
        "CONVEYOR_LOG_JSON": "true",
        "CONVEYOR_SECURITY_PROTOCOL": "SASL_SSL",
        "CONVEYOR_SASL_MECHANISM": "SCRAM-SHA-512",
        "CONVEYOR_SASL_USERNAME": "svc",
        "CONVEYOR_SASL_PASSWORD": "hunter2",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.partition_unit == 3
    assert s.metrics_port == 9100
    assert s.retry_delays == (1.0, 10.0, 120.0)
    assert s.log_json is True
    assert s.kafka_config() == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "hunter2",
    }


def test_keyword_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"CONVEYOR_TOPIC_PREFIX": "env"}, topic_prefix="kw")
    assert s.topic_prefix == "kw"


def test_unknown_conveyor_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_TOPIC_PREFX"):
        Settings.from_env({"CONVEYOR_TOPIC_PREFX": "typo"})


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CONVEYOR_PARTITION_UNIT": "two"}, "CONVEYOR_PARTITION_UNIT"),
        ({"CONVEYOR_PARTITION_UNIT": "0"}, "partition_unit"),
        ({"CONVEYOR_KAFKA_BOOTSTRAP": "no-port"}, "kafka_bootstrap"),
        ({"CONVEYOR_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"CONVEYOR_DATABASE_SCHEMA": "Bad-Name"}, "database_schema"),
        ({"CONVEYOR_TOPIC_PREFIX": "has space"}, "topic_prefix"),
        ({"CONVEYOR_RETRY_DELAYS": "30s,5s"}, "retry_delays"),
        ({"CONVEYOR_JOB_RETENTION_DAYS": "3"}, "job_retention_days"),
        ({"CONVEYOR_METRICS_PORT": "70000"}, "metrics_port"),
        ({"CONVEYOR_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"CONVEYOR_SASL_MECHANISM": "PLAIN"}, "sasl_mechanism"),
        ({"CONVEYOR_LOG_JSON": "maybe"}, "CONVEYOR_LOG_JSON"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_setting(
    env: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_secrets_never_show_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings(
        database_url="postgresql://app:topsecret@db:5432/jobs",
        schema_registry_basic_auth=Secret("reg:regsecret"),
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=Secret("saslsecret"),
        ssl_key_password=Secret("keysecret"),
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s / %r", s, s)
    for text in (repr(s), str(s), caplog.text):
        for secret in ("topsecret", "regsecret", "saslsecret", "keysecret"):
            assert secret not in text
    assert "app:**********@db" in repr(s)
    assert s.registry_config()["basic.auth.user.info"] == "reg:regsecret"


def test_settings_are_frozen_and_replace_revalidates() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.topic_prefix = "x"  # type: ignore[misc]
    assert s.replace(partition_unit=5).partition_unit == 5
    with pytest.raises(ConfigurationError, match="partition_unit"):
        s.replace(partition_unit=-1)


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("5s", 5.0, "5s"),
        ("30s", 30.0, "30s"),
        ("5m", 300.0, "5m"),
        ("1h", 3600.0, "1h"),
        ("250ms", 0.25, "250ms"),
        ("90", 90.0, "90s"),
        ("7d", 604800.0, "7d"),
    ],
)
def test_durations_parse_and_format(text: str, seconds: float, label: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == label


def test_the_harness_variables_are_not_settings_and_are_let_through() -> None:
    """CONVEYOR_TEST_BROKER and CONVEYOR_KAFKA_CACHE steer the local services and the test
    harness; a process that reads its settings from the environment must still start
    (``CONVEYOR_TEST_BROKER=tansu python -m bench`` did not)."""
    env = {
        "CONVEYOR_TEST_BROKER": "tansu",
        "CONVEYOR_KAFKA_CACHE": "/tmp/jars",
        "CONVEYOR_TEST_CHROMIUM": "/usr/bin/chromium",
        "CONVEYOR_TOPIC_PREFIX": "svc",
    }
    assert Settings.from_env(env).topic_prefix == "svc"
    assert explicitly_set(env) == frozenset({"topic_prefix"})


def test_the_worker_instance_id_is_read_from_the_environment_and_checked() -> None:
    settings = Settings.from_env({"CONVEYOR_WORKER_INSTANCE_ID": "conveyor-worker-0"})
    assert settings.worker_instance_id == "conveyor-worker-0"
    assert Settings().worker_instance_id is None
    with pytest.raises(ConfigurationError, match="worker_instance_id"):
        Settings(worker_instance_id="has spaces")


def test_the_gc_threshold_is_read_from_the_environment_and_checked() -> None:
    assert Settings().gc_threshold == (50_000, 20, 20)
    settings = Settings.from_env({"CONVEYOR_GC_THRESHOLD": "700,10,10"})
    assert settings.gc_threshold == (700, 10, 10)
    with pytest.raises(ConfigurationError, match="CONVEYOR_GC_THRESHOLD: expected comma-sep"):
        Settings.from_env({"CONVEYOR_GC_THRESHOLD": "700,ten,10"})
    with pytest.raises(ConfigurationError, match="three positive integers"):
        Settings.from_env({"CONVEYOR_GC_THRESHOLD": "700,10"})
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        Settings(gc_threshold=(0, 10, 10))
