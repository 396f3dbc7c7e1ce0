"""Apache Kafka, one combined broker + controller in KRaft mode, from jars Maven resolves.

The reference broker of the test suite and the benchmarks. Nothing needs Docker: the
jars of ``org.apache.kafka:kafka_2.13`` and its runtime dependencies are resolved once by
Maven (``kafka-pom.xml`` beside this module) into a cache directory that later runs
reuse, and ``java`` runs ``kafka.Kafka`` from them.

The data directory outlives the process, so a test can ``kill()`` the broker (SIGKILL)
and ``start()`` it again on the same data and ports. Readiness means a client bootstraps
and sees the broker in metadata, never a sleep. With ``sasl_ssl=True`` a second listener
speaks SASL_SSL with SCRAM-SHA-512, its certificate signed by a throwaway CA made here.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from conveyor.embedded import tls
from conveyor.embedded.process import (
    ChildService,
    die_with_parent,
    free_port,
    halt,
    wait_for_broker,
)
from conveyor.errors import BrokerUnavailableError, ConfigurationError

KAFKA_VERSION = "4.4.0"
#: Java release the broker needs (Kafka 4.x brokers run on 17+).
JAVA_MIN = 17
KAFKA_START_TIMEOUT = 90.0
MAVEN_TIMEOUT = 900.0
#: The SCRAM user the SASL_SSL listener knows, and its password.
SCRAM_USER = "conveyor"
SCRAM_PASSWORD = "conveyor-test-secret"
#: Heap and collector for a 2-core, test-sized broker.
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.groups.name = org.apache.kafka.coordinator.group
logger.groups.level = INFO
"""


def cache_dir() -> Path:
    """Where resolved jars live: ``$CONVEYOR_KAFKA_CACHE`` or ``~/.cache/conveyor/kafka``."""
    root = os.environ.get("CONVEYOR_KAFKA_CACHE") or Path.home() / ".cache" / "conveyor" / "kafka"
    return Path(root) / KAFKA_VERSION


def java_version(java: str) -> int | None:
    """The major version ``java -version`` reports, or None when it cannot be read."""
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def unavailable() -> str | None:
    """Why Apache Kafka cannot be launched here, or None when it can.

    The jar cache counts for Maven: with the jars resolved, only ``java`` is needed.
    """
    java = shutil.which("java")
    if java is None:
        return "java (17+) is not on the PATH"
    version = java_version(java)
    if version is None or version < JAVA_MIN:
        return f"java {JAVA_MIN}+ is needed, found {version or 'an unreadable version'} at {java}"
    if not (cache_dir() / ".resolved").exists() and shutil.which("mvn") is None:
        return "mvn (Maven) is not on the PATH and no resolved Kafka jars are cached"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions and bench runs wait
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_jars() -> Path:
    """Resolves Kafka's jars with Maven once; returns the directory that holds them.

    Raises:
        ConfigurationError: Java or Maven is missing, or Maven failed (its output is quoted).
    """
    cache = cache_dir()
    libs = cache / "libs"
    if (cache / ".resolved").exists():
        return libs
    reason = unavailable()
    if reason is not None:
        raise ConfigurationError("kafka", f"cannot launch Apache Kafka: {reason}")
    with _locked(cache / ".lock"):
        if (cache / ".resolved").exists():
            return libs
        staging = cache / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        pom = importlib.resources.files("conveyor.embedded") / "kafka-pom.xml"
        with importlib.resources.as_file(pom) as pom_path:
            proc = subprocess.run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    str(pom_path),
                    f"-Dkafka.version={KAFKA_VERSION}",
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                ],
                capture_output=True,
                text=True,
                timeout=MAVEN_TIMEOUT,
                check=False,
            )
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise ConfigurationError(
                "kafka", "Maven could not resolve Apache Kafka:\n" + "\n".join(tail)
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (cache / ".resolved").write_text(KAFKA_VERSION + "\n")
    return libs


def _cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class ApacheKafka(ChildService):
    """One Apache Kafka node (broker + controller) on loopback; a context manager.

    Args:
        data_dir: Where the log, metadata and config live; a temporary directory, removed
            on ``close()``, when omitted. Kept across ``kill()``/``start()``.
        host: The loopback address to bind and advertise.
        sasl_ssl: Also open a SASL_SSL listener with SCRAM-SHA-512 (user ``SCRAM_USER``).
        heap_options: JVM options, ``JVM_OPTIONS`` by default.
        advertised_port: The PLAINTEXT port clients are told to connect to, when it is not
            the listener's own: a TCP proxy in front of the broker (clients bootstrapping
            there keep going through it). The broker's own readiness check still uses
            ``bootstrap``.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        sasl_ssl: bool = False,
        heap_options: tuple[str, ...] = JVM_OPTIONS,
        advertised_port: int | None = None,
    ) -> None:
        self._owned_tmp = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="conveyor-kafka-"))
        self.host = host
        self.port = free_port(host)
        self.controller_port = free_port(host)
        self.sasl_port = free_port(host) if sasl_ssl else None
        self.sasl_ssl = sasl_ssl
        self.heap_options = heap_options
        self.advertised_port = advertised_port
        self.log_path = self.data_dir / "kafka.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener's ``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_SSL listener's ``host:port``.

        Raises:
            ConfigurationError: The broker was made without ``sasl_ssl=True``.
        """
        if self.sasl_port is None:
            raise ConfigurationError("kafka", "this broker has no SASL_SSL listener")
        return f"{self.host}:{self.sasl_port}"

    @property
    def ca_file(self) -> Path:
        """The throwaway CA certificate that signed the SASL_SSL listener's certificate."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return None if self._process is None else self._process.pid

    def _properties(self) -> str:
        listeners = [
            f"PLAINTEXT://{self.bootstrap}",
            f"CONTROLLER://{self.host}:{self.controller_port}",
        ]
        advertised = [f"PLAINTEXT://{self.host}:{self.advertised_port or self.port}"]
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data_dir / 'data'}",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
        ]
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if self.sasl_ssl:
            listeners.append(f"SASL_SSL://{self.sasl_bootstrap}")
            advertised.append(f"SASL_SSL://{self.sasl_bootstrap}")
            protocols += ",SASL_SSL:SASL_SSL"
            keystore = tls.broker_keystore(self.data_dir / "tls", self.host)
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={keystore}",
            ]
        lines += [
            f"listeners={','.join(listeners)}",
            f"advertised.listeners={','.join(advertised)}",
            f"listener.security.protocol.map={protocols}",
        ]
        return "\n".join(lines) + "\n"

    def _java(self, libs: Path, *args: str) -> list[str]:
        return [
            "java",
            *self.heap_options,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, libs: Path) -> None:
        config = self.data_dir / "server.properties"
        config.write_text(self._properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        command = [
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(config),
            # One argument: a random id may start with "-", which a separate one would
            # make the tool read as an option.
            f"--cluster-id={_cluster_id()}",
            "--feature",
            "share.version=1",
            "--ignore-formatted",
        ]
        if self.sasl_ssl:
            command += [
                "--add-scram",
                f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
            ]
        proc = subprocess.run(
            self._java(libs, *command), capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise BrokerUnavailableError(
                f"formatting Kafka storage failed: {(proc.stdout + proc.stderr).strip()[-2000:]}"
            )

    def start(self, timeout: float = KAFKA_START_TIMEOUT) -> None:
        """Starts the broker, formatting its storage the first time; returns once it is ready.

        Raises:
            ConfigurationError: Java or Maven is missing.
            BrokerUnavailableError: The broker exited or did not answer within ``timeout``;
                the message carries the tail of its log.
        """
        if self._process is not None and self._process.poll() is None:
            return
        libs = resolve_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "data" / "meta.properties").exists():
            self._format(libs)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(self.data_dir / "server.properties")),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
            process_group=0,  # a terminal's Ctrl-C reaches only the parent, which stops it
        )
        try:
            wait_for_broker(self.bootstrap, timeout, alive=self._process_alive)
        except BrokerUnavailableError as exc:
            self.stop()
            raise BrokerUnavailableError(f"{exc}\n--- kafka.log ---\n{self.log_tail()}") from exc

    def _process_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the broker's log, for a failing test to print."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILLs the broker, as a crash would; its data stays for ``start()``."""
        process, self._process = self._process, None
        halt(process, signal.SIGKILL)
        self._close_log()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the broker cleanly (SIGTERM, then SIGKILL after ``timeout``); data stays."""
        process, self._process = self._process, None
        halt(process, timeout=timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stops the broker and removes a data directory this object made."""
        self.stop()
        if self._owned_tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)
