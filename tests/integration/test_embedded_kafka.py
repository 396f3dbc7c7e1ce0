"""The Apache Kafka launcher the suite and the benchmarks run on (``conveyor.embedded.kafka``).

Each test starts its own node, so it may kill it. They need Java 17+ (CI installs it);
without Java the launcher cannot run and there is nothing to test.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from conveyor.embedded import kafka
from conveyor.settings import Secret, Settings
from tests.kafka_helpers import wait_visible

pytestmark = pytest.mark.skipif(
    kafka.unavailable() is not None, reason=f"no Apache Kafka here: {kafka.unavailable()}"
)


def produce(config: dict[str, str], topic: str, count: int) -> None:
    producer = Producer({**config, "acks": "all", "log_level": 0})
    for n in range(count):
        producer.produce(topic, value=f"m{n}".encode())
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "log_level": 0}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        return [m.value() or b"" for m in consumer.consume(100, timeout=10) if m.error() is None]
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_a_killed_broker_restarts_on_its_data_and_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9, then start again: same address, every acknowledged record still there. The
    cluster id here starts with "-", which the storage tool once took for an option."""
    monkeypatch.setattr(kafka, "_cluster_id", lambda: "-" + uuid.uuid4().hex[:21])
    node = kafka.ApacheKafka(data_dir=tmp_path / "kafka")
    try:
        node.start()
        bootstrap = node.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(timeout=30)
        wait_visible(bootstrap, "kept", 1)
        produce({"bootstrap.servers": bootstrap}, "kept", 10)
        first_pid = node.pid
        node.kill()
        node.start()
        assert node.bootstrap == bootstrap
        assert node.pid != first_pid
        assert read_all(bootstrap, "kept") == [f"m{n}".encode() for n in range(10)]
    except BaseException:
        print(node.log_tail())
        raise
    finally:
        node.close()
    assert (tmp_path / "kafka" / "data" / "meta.properties").exists()  # a given dir is kept


@pytest.mark.timeout(240)
def test_the_sasl_ssl_listener_takes_scram_credentials_and_refuses_a_wrong_password() -> None:
    """SASL_SSL with SCRAM-SHA-512 and a throwaway CA, through conveyor's own settings."""
    with kafka.ApacheKafka(sasl_ssl=True) as node:
        secure = Settings(
            kafka_bootstrap=node.sasl_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=kafka.SCRAM_USER,
            sasl_password=Secret(kafka.SCRAM_PASSWORD),
            ssl_ca_location=str(node.ca_file),
        )
        admin = AdminClient({**secure.kafka_config(), "log_level": 0})
        admin.create_topics([NewTopic("secure", 1, 1)])["secure"].result(timeout=30)
        produce(secure.kafka_config(), "secure", 3)
        assert read_all(node.bootstrap, "secure") == [b"m0", b"m1", b"m2"]

        wrong = secure.replace(sasl_password=Secret("not-the-password"))
        errors: list[KafkaError] = []
        refused = Producer({**wrong.kafka_config(), "log_level": 0, "error_cb": errors.append})
        deadline = time.monotonic() + 15
        while not errors and time.monotonic() < deadline:
            refused.poll(0.1)  # error_cb is served from poll()
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
