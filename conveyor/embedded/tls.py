"""A throwaway certificate authority and broker certificate, made with ``openssl``.

Only for the SASL_SSL listener of a test broker: the keys are unencrypted, valid for two
days, and live in the broker's data directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conveyor.errors import ConfigurationError

VALID_DAYS = "2"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ConfigurationError("kafka", f"openssl {args[0]} failed: {proc.stderr.strip()}")


def broker_keystore(folder: Path, host: str) -> Path:
    """Makes ``ca.pem`` and a PEM keystore (key + certificate for ``host``) in ``folder``.

    Returns:
        The keystore's path; made once, reused after.

    Raises:
        ConfigurationError: ``openssl`` is missing or refused.
    """
    keystore = folder / "broker-keystore.pem"
    if keystore.exists():
        return keystore
    if shutil.which("openssl") is None:
        raise ConfigurationError("kafka", "openssl is needed to make a test certificate")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", VALID_DAYS, "-subj", "/CN=conveyor test CA", cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
        "-subj", f"/CN={host}", cwd=folder,
    )  # fmt: skip
    (folder / "san.cnf").write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "broker.crt", "-days", VALID_DAYS, "-extfile", "san.cnf",
        cwd=folder,
    )  # fmt: skip
    keystore.write_text((folder / "broker.key").read_text() + (folder / "broker.crt").read_text())
    return keystore
