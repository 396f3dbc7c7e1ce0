"""The probe endpoint, the exporter choice, JSON logs with job fields, and bounded labels."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from conveyor import embedded
from conveyor.errors import ConfigurationError
from conveyor.observability import exporters, logs
from conveyor.observability.http import ProbeServer
from conveyor.observability.metrics import OTHER_TYPE, WorkerMetrics, metric_names


@pytest.fixture
def server() -> Iterator[tuple[ProbeServer, dict[str, str | None]]]:
    readiness: dict[str, str | None] = {"database": None}
    probe_server = ProbeServer(
        "127.0.0.1",
        0,
        metrics=lambda: b"conveyor_up 1\n",
        health=lambda: {"event_loop": None},
        ready=lambda: dict(readiness),
    )
    probe_server.start()
    try:
        yield probe_server, readiness
    finally:
        probe_server.stop()


def test_the_endpoint_serves_metrics_and_flips_readiness_with_its_checks(
    server: tuple[ProbeServer, dict[str, str | None]],
) -> None:
    probe_server, readiness = server
    base = f"http://127.0.0.1:{probe_server.port}"
    metrics = httpx.get(f"{base}/metrics")
    assert (metrics.status_code, metrics.text) == (200, "conveyor_up 1\n")
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    assert httpx.get(f"{base}/healthz").json() == {
        "status": "ok",
        "checks": {"event_loop": "ok"},
    }
    assert httpx.get(f"{base}/readyz").status_code == 200
    readiness["database"] = "no answer within 2s"
    failing = httpx.get(f"{base}/readyz")
    assert failing.status_code == 503
    assert failing.json() == {"status": "fail", "checks": {"database": "no answer within 2s"}}
    assert httpx.get(f"{base}/nothing").status_code == 404


def test_a_probe_that_raises_is_a_failed_check_not_a_dead_server() -> None:
    def broken() -> dict[str, str | None]:
        raise RuntimeError("boom")

    probe_server = ProbeServer("127.0.0.1", 0, metrics=bytes, health=broken, ready=broken)
    probe_server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{probe_server.port}/healthz")
        assert response.status_code == 503
        assert response.json()["checks"] == {"probe": "RuntimeError: boom"}
    finally:
        probe_server.stop()


def test_a_port_in_use_is_one_clear_configuration_error() -> None:
    port = embedded.free_port()
    first = ProbeServer("127.0.0.1", port, metrics=bytes, health=dict, ready=dict)
    try:
        with pytest.raises(ConfigurationError, match=f"CONVEYOR_METRICS_PORT.*{port}"):
            ProbeServer("127.0.0.1", port, metrics=bytes, health=dict, ready=dict)
    finally:
        first.stop()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "Console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, "none"),
    ],
)
def test_the_exporter_follows_the_standard_variables(
    environ: dict[str, str], expected: str
) -> None:
    assert exporters.exporter_name(environ) == expected


def test_no_exporter_installs_no_provider_and_unknown_ones_are_refused() -> None:
    assert exporters.configure_tracing("svc", {}) is None
    assert isinstance(exporters.build_exporter("console", {}), ConsoleSpanExporter)
    with pytest.raises(ConfigurationError, match=r"OTEL_TRACES_EXPORTER.*zipkin"):
        exporters.exporter_name({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        exporters.build_exporter("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


def test_otlp_without_its_package_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigurationError, match="opentelemetry-exporter-otlp-proto-http"):
        exporters.build_exporter("otlp", {})


def make_logger(*, json_lines: bool) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.JobFieldsFilter())
    formatter = logs.JsonFormatter() if json_lines else logs.TextFormatter(logs.TEXT_FORMAT)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{json_lines}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_logs_carry_the_job_fields_of_the_running_job() -> None:
    logger, stream = make_logger(json_lines=True)
    with logs.job_fields(job_id="j-1", job_type="email.send", priority="high", attempt=2):
        logger.info("sending to %s", "ada")
    logger.warning("between jobs")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "sending to ada"
    assert (inside["job_id"], inside["job_type"], inside["priority"], inside["attempt"]) == (
        "j-1",
        "email.send",
        "high",
        2,
    )
    assert inside["level"] == "INFO"
    assert "job_id" not in outside


def test_text_logs_append_the_job_fields() -> None:
    logger, stream = make_logger(json_lines=False)
    with logs.job_fields(job_id="j-2", job_type="t"):
        logger.info("hello")
    assert stream.getvalue().rstrip().endswith("hello job_id=j-2 job_type=t")


def test_bound_job_fields_are_made_only_when_a_record_is_logged() -> None:
    logger, stream = make_logger(json_lines=True)
    made: list[int] = []

    def fields() -> dict[str, str]:
        made.append(1)
        return {"job_id": "j-3", "tenant_id": "acme"}

    token = logs.bind_job_fields(fields)
    try:
        assert made == []  # nothing logged yet: nothing made
        logger.info("one")
    finally:
        logs.unbind_job_fields(token)
    logger.info("after")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["job_id"], inside["tenant_id"]) == ("j-3", "acme")
    assert "job_id" not in outside
    assert made == [1]


def test_labels_stay_bounded_to_registered_types() -> None:
    metrics = WorkerMetrics()
    metrics.know_types(["email.send"])
    assert metrics.labels("email.send", "high") == ("email.send", "high")
    assert metrics.labels("made.up.by.anyone", "high") == (OTHER_TYPE, "high")


def test_metric_names_lists_every_exposed_sample() -> None:
    names = metric_names()
    assert {
        "conveyor_jobs_submitted_total",
        "conveyor_jobs_completed_total",
        "conveyor_jobs_failed_total",
        "conveyor_job_wait_seconds_bucket",
        "conveyor_job_duration_seconds_count",
        "conveyor_queue_depth",
        "conveyor_dlq_pending",
        "conveyor_jobs_in_flight",
    } <= names
    assert not any(n.startswith("process_") for n in names)
