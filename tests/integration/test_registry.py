"""``conveyor registry serve`` driven by confluent-kafka's own registry client and Avro serde.

The session fixture ``schema_registry_url`` runs the registry as a subprocess on a
migrated Postgres schema; each test names its subjects after a random prefix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from conveyor.db import quote_ident
from conveyor.embedded import free_port
from conveyor.schemas.registry import MEDIA_TYPE
from tests.conftest import run_cli

MakeClient = Callable[..., SchemaRegistryClient]


def record(*fields: dict[str, Any], name: str = "Order") -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "test", "fields": list(fields)})


def compact(text: str) -> str:
    """The form the registry stores and serves a schema in."""
    return json.dumps(json.loads(text), separators=(",", ":"))


ID = {"name": "id", "type": "string"}
V1 = record(ID)
V2 = record(ID, {"name": "qty", "type": "int", "default": 0})
NO_DEFAULT = record(ID, {"name": "qty", "type": "int"})


def avro(text: str) -> Schema:
    return Schema(text, "AVRO")


@pytest.fixture
def subject() -> Callable[[str], str]:
    """Makes subject names unique to this test."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return lambda name: f"{prefix}.{name}"


@pytest.fixture
def make_client(schema_registry_url: str) -> Iterator[MakeClient]:
    """Makes fresh clients (no shared cache), closed after the test; kwargs add config."""
    made: list[SchemaRegistryClient] = []

    def make(**config: Any) -> SchemaRegistryClient:
        made.append(SchemaRegistryClient({"url": schema_registry_url, **config}))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> SchemaRegistryClient:
    return make_client()


@pytest.fixture
def http(schema_registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=schema_registry_url, timeout=10.0) as raw:
        yield raw


def registry_error(call: Callable[[], object]) -> tuple[int, int]:
    """Runs a client call expected to fail; returns (HTTP status, Confluent error code)."""
    with pytest.raises(SchemaRegistryError) as caught:
        call()
    return caught.value.http_status_code, caught.value.error_code


def test_registering_the_same_schema_again_returns_its_id_without_a_new_version(
    make_client: MakeClient, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    first = make_client().register_schema(s, avro(V1))
    # Another client, so its cache cannot answer; whitespace and key order differ too.
    spread = json.dumps(json.loads(V1), indent=4, sort_keys=True)
    again = make_client().register_schema(s, avro(spread))

    assert again == first
    assert make_client().get_versions(s) == [1]


def test_lookup_finds_the_version_holding_a_schema(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    id1 = client.register_schema(s, avro(V1))
    id2 = client.register_schema(s, avro(V2))

    found = client.lookup_schema(s, avro(V1))

    assert (found.subject, found.version, found.schema_id) == (s, 1, id1)
    assert id2 != id1
    assert registry_error(lambda: client.lookup_schema(s, avro(NO_DEFAULT))) == (404, 40403)
    missing = subject("nobody-value")
    assert registry_error(lambda: client.lookup_schema(missing, avro(V1))) == (404, 40401)


def test_a_schema_is_fetched_by_id_with_the_subjects_and_versions_holding_it(
    make_client: MakeClient, subject: Callable[[str], str]
) -> None:
    a, b = subject("a-value"), subject("b-value")
    writer = make_client()
    id_a = writer.register_schema(a, avro(V1))
    id_b = writer.register_schema(b, avro(V1))
    reader = make_client()

    fetched = reader.get_schema(id_a)
    pairs = reader.get_schema_versions(id_a)

    assert id_b == id_a
    assert (fetched.schema_str, fetched.schema_type) == (compact(V1), "AVRO")
    assert sorted((p.subject, p.version) for p in pairs if p.subject in (a, b)) == [
        (a, 1),
        (b, 1),
    ]
    assert registry_error(lambda: reader.get_schema(2**31 - 2)) == (404, 40403)


def test_versions_are_listed_and_fetched_by_number_or_latest(
    client: SchemaRegistryClient, http: httpx.Client, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    id1 = client.register_schema(s, avro(V1))
    id2 = client.register_schema(s, avro(V2))

    assert client.get_versions(s) == [1, 2]
    assert client.get_version(s, 1).schema_id == id1
    latest = client.get_latest_version(s)
    assert (latest.version, latest.schema_id, latest.schema.schema_str) == (2, id2, compact(V2))
    assert registry_error(lambda: client.get_version(s, 3)) == (404, 40402)
    assert registry_error(lambda: client.get_versions(subject("nobody"))) == (404, 40401)
    assert s in client.get_subjects()
    raw = http.get(f"/subjects/{s}/versions/latest/schema")
    assert (raw.status_code, raw.text) == (200, compact(V2))


def test_an_incompatible_change_is_refused_under_backward_and_accepted_under_none(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    client.register_schema(s, avro(V1))

    status = registry_error(lambda: client.register_schema(s, avro(NO_DEFAULT)))
    assert status == (409, 409)
    assert client.get_versions(s) == [1]

    # Typed as str by confluent-kafka, but it returns the response body, as Confluent's does.
    reply: Any = client.set_compatibility(s, "NONE")
    assert reply == {"compatibility": "NONE"}
    client.register_schema(s, avro(NO_DEFAULT))
    assert client.get_versions(s) == [1, 2]


def test_subject_config_overrides_the_global_level_until_deleted(
    client: SchemaRegistryClient, http: httpx.Client, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    assert client.get_compatibility() == "BACKWARD"
    assert registry_error(lambda: client.get_compatibility(s)) == (404, 40408)
    assert registry_error(lambda: client.set_compatibility(s, "SIDEWAYS")) == (422, 42203)

    client.set_compatibility(s, "FORWARD_TRANSITIVE")
    assert client.get_compatibility(s) == "FORWARD_TRANSITIVE"
    assert client.delete_config(s).compatibility_level == "FORWARD_TRANSITIVE"
    assert registry_error(lambda: client.get_compatibility(s)) == (404, 40408)

    try:
        client.set_compatibility(level="FULL")
        assert client.get_compatibility() == "FULL"
        fallback = http.get(f"/config/{s}", params={"defaultToGlobal": "true"})
        assert fallback.json() == {"compatibilityLevel": "FULL"}
    finally:
        client.delete_config()
    assert client.get_compatibility() == "BACKWARD"


def test_a_version_is_soft_deleted_then_hard_deleted(
    make_client: MakeClient, subject: Callable[[str], str]
) -> None:
    client = make_client()
    s = subject("orders-value")
    client.register_schema(s, avro(V1))
    client.register_schema(s, avro(V2))

    assert registry_error(lambda: client.delete_version(s, 2, permanent=True)) == (404, 40407)
    assert client.delete_version(s, 2) == 2
    assert client.get_versions(s) == [1]
    assert client.get_versions(s, deleted=True) == [1, 2]
    assert registry_error(lambda: make_client().get_version(s, 2)) == (404, 40402)
    assert make_client().get_version(s, 2, deleted=True).schema.schema_str == compact(V2)
    assert registry_error(lambda: client.delete_version(s, 2)) == (404, 40406)

    assert client.delete_version(s, 2, permanent=True) == 2
    assert client.get_versions(s, deleted=True) == [1]
    assert registry_error(lambda: client.delete_version(s, 2, permanent=True)) == (404, 40402)


def test_a_subject_is_soft_deleted_then_hard_deleted(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    prefix = s.split(".")[0]
    client.register_schema(s, avro(V1))
    client.register_schema(s, avro(V2))

    assert registry_error(lambda: client.delete_subject(s, permanent=True)) == (404, 40405)
    assert client.delete_subject(s) == [1, 2]
    assert client.get_subjects(subject_prefix=prefix) == []
    assert client.get_subjects(subject_prefix=prefix, deleted=True) == [s]
    assert registry_error(lambda: client.get_versions(s)) == (404, 40401)
    assert registry_error(lambda: client.delete_subject(s)) == (404, 40404)

    assert client.delete_subject(s, permanent=True) == [1, 2]
    assert client.get_subjects(subject_prefix=prefix, deleted=True) == []
    assert registry_error(lambda: client.delete_subject(s)) == (404, 40401)


def test_the_compatibility_endpoint_checks_without_registering(
    client: SchemaRegistryClient, http: httpx.Client, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    client.register_schema(s, avro(V1))

    assert client.test_compatibility(s, avro(V2)) is True
    assert client.test_compatibility(s, avro(NO_DEFAULT), version=1) is False
    assert client.test_compatibility_all_versions(s, avro(NO_DEFAULT)) is False
    verbose = http.post(
        f"/compatibility/subjects/{s}/versions/latest",
        params={"verbose": "true"},
        json={"schema": NO_DEFAULT},
    ).json()
    assert verbose["is_compatible"] is False
    assert "qty" in " ".join(verbose["messages"])
    assert client.get_versions(s) == [1]
    assert registry_error(lambda: client.test_compatibility(s, avro(V2), version=7)) == (
        404,
        40402,
    )
    nobody = subject("nobody")
    assert registry_error(lambda: client.test_compatibility(nobody, avro(V2))) == (404, 40401)


def test_a_record_round_trips_through_the_avro_serde_with_logical_types_intact(
    make_client: MakeClient, subject: Callable[[str], str]
) -> None:
    topic = subject("orders")
    schema = record(ID, {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}})
    value = {"id": "o-1", "at": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)}
    context = SerializationContext(topic, MessageField.VALUE)

    encoded = AvroSerializer(make_client(), schema)(value, context)
    decoded = AvroDeserializer(make_client())(encoded, context)

    assert encoded is not None
    registered = make_client().get_latest_version(f"{topic}-value")
    assert (encoded[0], int.from_bytes(encoded[1:5], "big")) == (0, registered.schema_id)
    assert decoded == value


def register_at_once(
    clients: list[SchemaRegistryClient], subjects: list[str], text: str
) -> list[int]:
    """Each client registers ``text`` under its subject, all released by one barrier."""
    barrier = threading.Barrier(len(clients))

    def register(client: SchemaRegistryClient, s: str) -> int:
        barrier.wait(timeout=10)
        return client.register_schema(s, avro(text))

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(register, clients, subjects))


def test_concurrent_registrations_of_a_new_schema_get_one_id_and_one_version(
    make_client: MakeClient, subject: Callable[[str], str]
) -> None:
    a, b = subject("a-value"), subject("b-value")
    targets = [a, a, a, b, b, b]
    # No retries: a retried 500 would hide a lost race behind the retry's success.
    clients = [make_client(**{"max.retries": 0}) for _ in targets]
    # A unique doc makes both schemas new to the registry, so the schema rows race too.
    doc = uuid.uuid4().hex
    rounds = [json.dumps({**json.loads(text), "doc": doc}) for text in (V1, V2)]

    for text in rounds:
        ids = register_at_once(clients, targets, text)

        assert len(set(ids)) == 1, ids

    reader = make_client()
    assert (reader.get_versions(a), reader.get_versions(b)) == ([1, 2], [1, 2])


def test_errors_are_confluent_json_bodies_with_the_registry_media_type(
    http: httpx.Client, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    json_schema = {"schema": "{}", "schemaType": "JSON"}
    cases = [
        (http.get(f"/subjects/{s}/versions"), 404, 40401),
        (http.post(f"/subjects/{s}/versions", json={"schema": "{nope"}), 422, 42201),
        (http.post(f"/subjects/{s}/versions", json=json_schema), 422, 42201),
        (http.get(f"/subjects/{s}/versions/first"), 422, 42202),
        (http.put("/config", json={"compatibility": "SIDEWAYS"}), 422, 42203),
        (http.get("/schemas/ids/0"), 404, 40403),
        # An id past Postgres' int (a Confluent header of random bytes): unknown, not a 500.
        (http.get("/schemas/ids/3523014692"), 404, 40403),
        (http.get("/schemas/ids/3523014692/subjects"), 404, 40403),
    ]

    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == MEDIA_TYPE
        body = response.json()
        assert body["error_code"] == code
        assert isinstance(body["message"], str)
        assert body["message"]
    assert "AVRO" in cases[2][0].json()["message"]


def test_plain_endpoints_answer_like_confluent(
    client: SchemaRegistryClient, http: httpx.Client, subject: Callable[[str], str]
) -> None:
    s = subject("orders-value")
    schema_id = client.register_schema(s, avro(V1))
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    form = http.post(f"/subjects/{s}/versions", content="schema=x", headers=form_type)

    assert http.get("/").json() == {}
    assert http.get("/mode").json() == {"mode": "READWRITE"}
    assert http.get("/schemas/types").json() == ["AVRO"]
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    by_id = http.get(f"/schemas/ids/{schema_id}").json()
    assert by_id["schema"] == compact(V1)
    assert "schemaType" not in by_id
    assert http.get(f"/schemas/ids/{schema_id}/schema").text == compact(V1)
    assert s in http.get(f"/schemas/ids/{schema_id}/subjects").json()
    assert (form.status_code, form.json()["error_code"]) == (415, 415)


def test_serve_refuses_to_start_on_an_unmigrated_schema_in_one_line(database_url: str) -> None:
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_DATABASE_SCHEMA": f"never_migrated_{uuid.uuid4().hex[:8]}",
    }

    result = run_cli("registry", "serve", "--port", str(free_port()), env=env)

    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "conveyor migrate" in lines[0]


@pytest.fixture
def migrated_schema(database_url: str) -> Iterator[str]:
    """A Postgres schema migrated by ``conveyor migrate``, dropped after the test."""
    schema = f"registry_{uuid.uuid4().hex[:10]}"
    env = {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_DATABASE_SCHEMA": schema}
    migrated = run_cli("migrate", env=env)
    assert migrated.code == 0, migrated.stderr
    yield schema
    asyncio.run(drop_schema(database_url, schema))


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


def test_serve_stops_cleanly_on_sigterm(database_url: str, migrated_schema: str) -> None:
    port = free_port()
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env |= {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_DATABASE_SCHEMA": migrated_schema}
    command = [sys.executable, "-m", "conveyor", "registry", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert (proc.returncode, err) == (0, "")
    assert f"serving http://127.0.0.1:{port}" in out


def wait_until_answering(url: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the registry exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # a poll interval under the deadline above, not a bare wait
    raise AssertionError(f"the registry did not answer at {url} within {timeout}s")
