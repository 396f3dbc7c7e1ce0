"""The one settings object every conveyor component takes.

``Settings`` is frozen and keyword-only. Build it in code, or with
``Settings.from_env()`` from ``CONVEYOR_*`` variables: the only place conveyor reads
the environment. An unknown ``CONVEYOR_*`` variable is an error rather than silently
ignored, so a typo cannot leave a production worker on a default; only the few that the
local services and the test harness read (``HARNESS_VARIABLES``) are let through.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from conveyor.errors import ConfigurationError

ENV_PREFIX = "CONVEYOR_"
#: ``CONVEYOR_*`` variables that are not settings: read by the local services and the test
#: harness (``conveyor.embedded``, ``tests/``), and ignored here rather than refused.
HARNESS_VARIABLES = frozenset(
    {"CONVEYOR_TEST_BROKER", "CONVEYOR_KAFKA_CACHE", "CONVEYOR_TEST_CHROMIUM"}
)

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DATABASE_SCHEMA = "conveyor"
DEFAULT_SCHEMA_REGISTRY_URL = "http://127.0.0.1:8081"
DEFAULT_TOPIC_PREFIX = "conveyor"
DEFAULT_PARTITION_UNIT = 2
DEFAULT_RETRY_DELAYS = (5.0, 30.0, 300.0)
MIN_JOB_RETENTION_DAYS = 7
DEFAULT_METRICS_PORT = 9464
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: The garbage collector's thresholds while a worker or a ledger runs (``conveyor.gctuning``).
DEFAULT_GC_THRESHOLD = (50_000, 20, 20)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOST_PORT_RE = re.compile(r"^[^\s:,]+:\d{1,5}$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MASK = "**********"


class Secret:
    """A string that never shows itself in a repr, a str() or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """Returns the real value; call it only where the secret is handed to a client."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(text: str) -> float:
    """Parses ``"250ms"``, ``"5s"``, ``"5m"``, ``"1h"``, ``"7d"`` or plain seconds.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: The text is not a duration.
    """
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 5s, 30s, 5m, 1h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """Formats seconds as the shortest exact label (``5s``, ``5m``, ``1h``, ``250ms``)."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


def mask_url(url: str) -> str:
    """Returns the URL with any password replaced by a mask, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{_MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_delays(text: str) -> tuple[float, ...]:
    return tuple(parse_duration(part) for part in text.split(",") if part.strip())


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "partition_unit": _parse_int,
    "replication_factor": _parse_int,
    "job_retention_days": _parse_int,
    "metrics_port": _parse_int,
    "max_payload_bytes": _parse_int,
    "retry_delays": _parse_delays,
    "log_json": _parse_bool,
    "gc_threshold": _parse_ints,
    "schema_registry_basic_auth": Secret,
    "sasl_password": Secret,
    "ssl_key_password": Secret,
    "ui_token": Secret,
}


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """Configuration shared by the producer, the worker, the job store and the CLI.

    Args:
        kafka_bootstrap: Comma-separated ``host:port`` list of Kafka brokers.
        database_url: Postgres DSN (``postgresql://user:pass@host:port/db``).
        database_schema: Postgres schema holding conveyor's tables.
        schema_registry_url: URL of a Confluent-compatible schema registry.
        schema_registry_basic_auth: ``user:password`` for the registry, if it needs one.
        topic_prefix: Prefix of every topic and consumer group conveyor uses.
        partition_unit: Partitions of the ``low`` topic; the others get 2x, 3x and 4x.
        replication_factor: Replicas per topic; ``None`` takes the broker's default.
        retry_delays: Delays of the retry ladder in seconds, strictly increasing.
        job_retention_days: Retention of the job topics (7 days at least).
        metrics_port: Port of the worker's /metrics, /healthz and /readyz; 0 disables it.
        max_payload_bytes: Largest encoded job payload the producer accepts.
        log_json: Log as JSON lines instead of text.
        security_protocol: Kafka ``security.protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL).
        sasl_mechanism: Kafka ``sasl.mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
        sasl_username: SASL user name.
        sasl_password: SASL password.
        ssl_ca_location: Path of the CA bundle that signs the brokers' certificates.
        ssl_certificate_location: Path of the client certificate (mutual TLS).
        ssl_key_location: Path of the client private key (mutual TLS).
        ssl_key_password: Password of the client private key.
        ui_token: Bearer token that ``conveyor ui`` accepts (``Authorization: Bearer ...``).
        ui_database_url: Postgres DSN of a non-owner role for ``conveyor ui --tenant``, so
            row-level security limits the UI to one tenant's rows.
        worker_instance_id: A stable name of this worker instance (a StatefulSet pod's
            name), used as Kafka's ``group.instance.id``: static membership, so a
            restart within the session timeout rebalances no other worker. Each running
            instance needs its own; unset (the default) means dynamic membership.
        gc_threshold: The cyclic garbage collector's three thresholds while a worker,
            its ledger child or ``conveyor ledger`` runs, put back at their stop (see
            ``conveyor.gctuning``). CPython's default is ``(700, 10, 10)``.
    """

    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    database_url: str = DEFAULT_DATABASE_URL
    database_schema: str = DEFAULT_DATABASE_SCHEMA
    schema_registry_url: str = DEFAULT_SCHEMA_REGISTRY_URL
    schema_registry_basic_auth: Secret | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    partition_unit: int = DEFAULT_PARTITION_UNIT
    replication_factor: int | None = None
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    job_retention_days: int = MIN_JOB_RETENTION_DAYS
    metrics_port: int = DEFAULT_METRICS_PORT
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    log_json: bool = False
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Secret | None = None
    ui_token: Secret | None = None
    ui_database_url: str | None = None
    worker_instance_id: str | None = None
    gc_threshold: tuple[int, ...] = DEFAULT_GC_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("schema_registry_basic_auth", "sasl_password", "ssl_key_password", "ui_token"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Secret(value))
        object.__setattr__(self, "retry_delays", tuple(float(d) for d in self.retry_delays))
        object.__setattr__(self, "gc_threshold", tuple(self.gc_threshold))
        _validate(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Builds settings from ``CONVEYOR_*`` variables, then applies keyword overrides.

        Args:
            environ: The mapping to read; ``os.environ`` when omitted.
            **overrides: Values that win over the environment.

        Raises:
            ConfigurationError: A variable is unknown (every unknown one is named, each
                with the closest known name), or a value is invalid.
        """
        env = os.environ if environ is None else environ
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        unknown = sorted(
            var
            for var in env
            if var.startswith(ENV_PREFIX)
            and var not in HARNESS_VARIABLES
            and var[len(ENV_PREFIX) :].lower() not in names
        )
        if unknown:
            raise ConfigurationError(", ".join(unknown), _unknown_problem(unknown, names))
        for var, raw in env.items():
            if not var.startswith(ENV_PREFIX) or var in HARNESS_VARIABLES:
                continue
            name = var[len(ENV_PREFIX) :].lower()
            parser = _ENV_PARSERS.get(name, str)
            try:
                values[name] = parser(raw)
            except ValueError as exc:
                raise ConfigurationError(var, str(exc)) from exc
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Returns a copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def safe_database_url(self) -> str:
        """The database URL with its password masked, for logs and messages."""
        return mask_url(self.database_url)

    def kafka_config(self) -> dict[str, str]:
        """Connection and security properties for confluent-kafka clients."""
        config = {"bootstrap.servers": self.kafka_bootstrap}
        optional = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": _reveal(self.sasl_password),
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": _reveal(self.ssl_key_password),
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config

    def registry_config(self) -> dict[str, str]:
        """Configuration for confluent-kafka's ``SchemaRegistryClient``."""
        config = {"url": self.schema_registry_url}
        if self.schema_registry_basic_auth is not None:
            config["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        return config

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            masked = f.name in ("database_url", "ui_database_url") and value is not None
            text = mask_url(value) if masked else value
            shown.append(f"{f.name}={text!r}")
        return f"Settings({', '.join(shown)})"


def explicitly_set(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The settings given by ``CONVEYOR_*`` variables (as field names), not by defaults.

    ``conveyor dev`` uses it to start only the services the environment does not name.
    """
    env = os.environ if environ is None else environ
    return frozenset(
        var[len(ENV_PREFIX) :].lower()
        for var, value in env.items()
        if var.startswith(ENV_PREFIX) and var not in HARNESS_VARIABLES and value
    )


def _reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _env_names(names: set[str]) -> str:
    return ", ".join(ENV_PREFIX + n.upper() for n in sorted(names))


def _unknown_problem(unknown: list[str], names: set[str]) -> str:
    """Names each unknown variable with the closest known one; lists the known if one has none."""
    hints = []
    unmatched = False
    for var in unknown:
        close = difflib.get_close_matches(var[len(ENV_PREFIX) :].lower(), names, n=1, cutoff=0.6)
        if close:
            hints.append(f"{var}: did you mean {ENV_PREFIX}{close[0].upper()}?")
        else:
            hints.append(f"{var}: no such setting")
            unmatched = True
    kind = "unknown variable" if len(unknown) == 1 else f"{len(unknown)} unknown variables"
    known = f"; known: {_env_names(names)}" if unmatched else ""
    return f"{kind} ({'; '.join(hints)}){known}"


def _require(ok: bool, setting: str, problem: str) -> None:
    if not ok:
        raise ConfigurationError(setting, problem)


def _validate(s: Settings) -> None:
    servers = [part.strip() for part in s.kafka_bootstrap.split(",")]
    _require(
        all(_HOST_PORT_RE.match(part) for part in servers),
        "kafka_bootstrap",
        f"expected host:port[,host:port...], got {s.kafka_bootstrap!r}",
    )
    scheme = urlsplit(s.database_url).scheme
    _require(
        scheme in ("postgres", "postgresql"),
        "database_url",
        f"expected a postgresql:// URL, got {mask_url(s.database_url)!r}",
    )
    _require(
        bool(_IDENTIFIER_RE.match(s.database_schema)),
        "database_schema",
        f"expected a lower-case SQL identifier, got {s.database_schema!r}",
    )
    _require(
        all(
            urlsplit(u.strip()).scheme in ("http", "https")
            for u in s.schema_registry_url.split(",")
        ),
        "schema_registry_url",
        f"expected an http(s):// URL, got {s.schema_registry_url!r}",
    )
    _require(
        bool(_TOPIC_PREFIX_RE.match(s.topic_prefix)),
        "topic_prefix",
        f"expected letters, digits, '.', '_' or '-' (at most 200), got {s.topic_prefix!r}",
    )
    _require(s.partition_unit >= 1, "partition_unit", f"must be >= 1, got {s.partition_unit}")
    _require(
        s.replication_factor is None or s.replication_factor >= 1,
        "replication_factor",
        f"must be >= 1 or unset, got {s.replication_factor}",
    )
    delays = s.retry_delays
    _require(
        bool(delays) and all(d > 0 for d in delays) and list(delays) == sorted(set(delays)),
        "retry_delays",
        f"must be positive and strictly increasing, got {delays}",
    )
    _require(
        s.job_retention_days >= MIN_JOB_RETENTION_DAYS,
        "job_retention_days",
        f"must be >= {MIN_JOB_RETENTION_DAYS}, got {s.job_retention_days}",
    )
    _require(0 <= s.metrics_port <= 65535, "metrics_port", f"must be 0-65535, got {s.metrics_port}")
    _require(
        s.max_payload_bytes >= 1, "max_payload_bytes", f"must be >= 1, got {s.max_payload_bytes}"
    )
    _require(
        s.ui_database_url is None
        or urlsplit(s.ui_database_url).scheme in ("postgres", "postgresql"),
        "ui_database_url",
        f"expected a postgresql:// URL, got {mask_url(s.ui_database_url or '')!r}",
    )
    _require(
        s.worker_instance_id is None or bool(_TOPIC_PREFIX_RE.match(s.worker_instance_id)),
        "worker_instance_id",
        f"expected letters, digits, '.', '_' or '-' (at most 200), got {s.worker_instance_id!r}",
    )
    _require(
        len(s.gc_threshold) == 3 and all(t >= 1 for t in s.gc_threshold),
        "gc_threshold",
        f"expected three positive integers such as 50000,20,20, got {s.gc_threshold!r}",
    )
    _validate_security(s)


def _validate_security(s: Settings) -> None:
    _require(
        s.security_protocol is None or s.security_protocol in SECURITY_PROTOCOLS,
        "security_protocol",
        f"expected one of {', '.join(SECURITY_PROTOCOLS)}, got {s.security_protocol!r}",
    )
    _require(
        s.sasl_mechanism is None or s.sasl_mechanism in SASL_MECHANISMS,
        "sasl_mechanism",
        f"expected one of {', '.join(SASL_MECHANISMS)}, got {s.sasl_mechanism!r}",
    )
    if s.sasl_mechanism is not None:
        _require(
            s.sasl_username is not None and s.sasl_password is not None,
            "sasl_mechanism",
            "needs sasl_username and sasl_password",
        )
        _require(
            (s.security_protocol or "").startswith("SASL_"),
            "security_protocol",
            f"must be SASL_PLAINTEXT or SASL_SSL when sasl_mechanism is set, "
            f"got {s.security_protocol!r}",
        )
