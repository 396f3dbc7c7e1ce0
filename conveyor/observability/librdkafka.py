"""librdkafka's log and error reports, made quiet, de-duplicated and actionable.

A confluent-kafka client prints librdkafka's log to stderr unless it is given a
``logger``: against an unreachable broker that is one ``FAIL ... Connection refused``
line per reconnect, hundreds a minute, burying the one error that matters. conveyor's
clients get :class:`LibrdkafkaLog` instead, which sends those lines to the Python logger
``conveyor.librdkafka`` at DEBUG (quiet at every CLI default level), and drops a line
that repeats within a minute. :class:`ClientErrors` is their ``error_cb``: it keeps
the latest useful error, so the exception a user sees can say why the broker was not
reached, and logs each distinct error once a minute, at DEBUG too: the error that
matters reaches the caller as an exception.

:func:`unreachable` is the one wording of "the broker did not answer", naming the
address tried and ``CONVEYOR_KAFKA_BOOTSTRAP``, or, when the broker answered but refused
the SASL credentials, the ``CONVEYOR_SASL_*`` settings instead.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from confluent_kafka import KafkaError

LOGGER_NAME = "conveyor.librdkafka"
REPEAT_WINDOW = 60.0
"""Seconds during which a repeated librdkafka line or error is dropped."""

CONNECT_TIMEOUT = 5.0
"""Seconds a client that has never reached a broker waits for one before giving up."""

log = logging.getLogger(LOGGER_NAME)

# librdkafka ends its lines with a varying note: "(after 0ms in state CONNECT)",
# "(after 3ms in state UP, 4 identical error(s) suppressed)". Repeats differ only there.
_TRAILER = re.compile(r"\s*\([^()]*\)\s*$")
# "127.0.0.1:1/bootstrap: " or "broker:9092/1: ", the broker that logged it.
_BROKER_PREFIX = re.compile(r"^\S+/(?:bootstrap|\d+): ")


class _Repeats:
    """Admits a key once per ``REPEAT_WINDOW``; thread-safe (librdkafka calls from threads)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._last.get(key)
            if seen is not None and now - seen < REPEAT_WINDOW:
                return False
            if len(self._last) > 1000:  # a bound, in case keys never repeat
                self._last.clear()
            self._last[key] = now
            return True


def plain(text: str) -> str:
    """A librdkafka message without its broker prefix and its varying trailer."""
    return _BROKER_PREFIX.sub("", _TRAILER.sub("", text))


class LibrdkafkaLog:
    """confluent-kafka's ``logger``: librdkafka's lines at DEBUG, repeats dropped."""

    def __init__(self) -> None:
        self._repeats = _Repeats()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """Called by confluent-kafka as ``log(level, "%s [%s] %s", facility, name, text)``."""
        text = str(args[-1]) if args else fmt
        facility = str(args[0]) if len(args) == 3 else ""
        if self._repeats.admit(f"{facility} {_TRAILER.sub('', text)}"):
            log.debug(fmt, *args)


class ClientErrors:
    """confluent-kafka's ``error_cb``: keeps the latest useful error, logs each once.

    It holds no reference to its client, so the client is freed as soon as it is dropped.
    """

    def __init__(self) -> None:
        self._repeats = _Repeats()
        self.latest: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        # "1/1 brokers are down" follows the useful reason (refused, TLS, SASL) every time.
        if error.code() != KafkaError._ALL_BROKERS_DOWN or self.latest is None:
            self.latest = error
        if self._repeats.admit(_TRAILER.sub("", error.str())):
            log.debug("kafka client error: %s", error.str())

    def reason(self, default: str) -> str:
        """The latest useful error, in plain words; ``default`` when there was none."""
        return default if self.latest is None else plain(self.latest.str())


def client_config() -> tuple[dict[str, Any], ClientErrors]:
    """The ``logger`` and ``error_cb`` properties for a client, and the error collector."""
    errors = ClientErrors()
    return {"logger": LibrdkafkaLog(), "error_cb": errors, "log_level": 6}, errors


# librdkafka's wording of KafkaError._AUTHENTICATION (a wrong SASL user or password).
_AUTHENTICATION = re.compile(r"SASL authentication error|Authentication failed")


def unreachable(bootstrap: str, reason: str) -> str:
    """The message for a Kafka cluster that did not answer, naming what to check.

    A broker that answered but refused the SASL credentials is not unreachable: the
    message then names the credential settings rather than the bootstrap address.
    """
    if _AUTHENTICATION.search(reason):
        return (
            f"Kafka at {bootstrap} refused the credentials ({reason}); "
            "check CONVEYOR_SASL_USERNAME, CONVEYOR_SASL_PASSWORD and CONVEYOR_SASL_MECHANISM"
        )
    return (
        f"cannot reach Kafka at {bootstrap} ({reason}); "
        "check CONVEYOR_KAFKA_BOOTSTRAP and that the broker is up"
    )
