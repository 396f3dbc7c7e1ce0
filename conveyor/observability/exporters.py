"""Installing an OpenTelemetry SDK tracer provider from the standard ``OTEL_*`` variables.

``OTEL_TRACES_EXPORTER`` picks the exporter: ``otlp`` (needs the
``opentelemetry-exporter-otlp-proto-http`` package, the ``otlp`` extra; grpc when
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and that package is installed), ``console`` or
``none``. Unset, it is ``otlp`` when an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set, else
``none``: no provider is installed and spans stay the API's no-ops.
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource as usual.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from conveyor.errors import ConfigurationError
from conveyor.observability import tracing

EXPORTERS = ("otlp", "console", "none")
#: OTLP protocol -> (exporter module, the package that ships it).
_OTLP_MODULES = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
}
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def exporter_name(environ: Mapping[str, str]) -> str:
    """The exporter the variables ask for.

    Raises:
        ConfigurationError: ``OTEL_TRACES_EXPORTER`` names an exporter conveyor lacks.
    """
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not name:
        return "otlp" if any(environ.get(v) for v in _ENDPOINTS) else "none"
    if name not in EXPORTERS:
        raise ConfigurationError(
            "OTEL_TRACES_EXPORTER", f"expected one of {', '.join(EXPORTERS)}, got {name!r}"
        )
    return name


def build_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    """The span exporter for ``name``; None for ``none``.

    Raises:
        ConfigurationError: ``otlp`` is asked for but its exporter package is missing.
    """
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    found = _OTLP_MODULES.get(protocol)
    if found is None:
        raise ConfigurationError(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            f"expected one of {', '.join(_OTLP_MODULES)}, got {protocol!r}",
        )
    module_name, package = found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            "OTEL_TRACES_EXPORTER",
            f"otlp over {protocol} needs the {package} package "
            "(pip install 'conveyor[otlp]' for http/protobuf)",
        ) from exc
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def configure_tracing(
    service_name: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Installs a global tracer provider as the ``OTEL_*`` variables ask; None for ``none``.

    Args:
        service_name: The resource's ``service.name`` unless ``OTEL_SERVICE_NAME`` sets it.
        environ: The variables to read; ``os.environ`` when omitted.

    Raises:
        ConfigurationError: The variables ask for an unknown or uninstalled exporter.
    """
    env = os.environ if environ is None else environ
    exporter = build_exporter(exporter_name(env), env)
    if exporter is None:
        return None
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing.look_again()
    return provider
