"""librdkafka's log and errors: through Python logging at DEBUG, each line once a minute."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from conveyor.observability import librdkafka

FAIL = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
    "Connection refused (after {n}ms in state CONNECT)"
)


def test_repeated_lines_that_differ_only_in_their_trailer_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = librdkafka.LibrdkafkaLog()
    with caplog.at_level(logging.DEBUG, logger=librdkafka.LOGGER_NAME):
        for n in range(200):
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", FAIL.format(n=n))
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "another failure")
    records = [r for r in caplog.records if r.name == librdkafka.LOGGER_NAME]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]
    assert "Connection refused" in records[0].getMessage()
    assert records[1].getMessage().endswith("another failure")


def test_client_errors_keep_the_useful_reason_over_all_brokers_down() -> None:
    errors = librdkafka.ClientErrors()
    assert errors.reason(default="no answer") == "no answer"
    # error_cb gets the text without the thread tag the log lines carry.
    errors(KafkaError(KafkaError._TRANSPORT, FAIL.format(n=0).split("]: ", 1)[1]))
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert errors.reason(default="-") == ("Connect to ipv4#127.0.0.1:1 failed: Connection refused")


def test_the_unreachable_message_names_the_address_and_the_setting() -> None:
    message = librdkafka.unreachable("kafka:9092", "Connection refused")
    assert message.startswith("cannot reach Kafka at kafka:9092 (Connection refused)")
    assert "CONVEYOR_KAFKA_BOOTSTRAP" in message


def test_refused_credentials_name_the_sasl_settings_not_the_bootstrap() -> None:
    reason = (
        "SASL authentication error: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512"
    )
    message = librdkafka.unreachable("kafka:9093", reason)
    assert message.startswith(f"Kafka at kafka:9093 refused the credentials ({reason})")
    assert "CONVEYOR_SASL_USERNAME" in message
    assert "CONVEYOR_SASL_PASSWORD" in message
    assert "CONVEYOR_KAFKA_BOOTSTRAP" not in message
