"""A throwaway certificate authority for TLS tests, made with the `openssl` command.

Keys are EC P-256 (instant to generate) and live only for the test run. The broker reads PEM
stores (`ssl.keystore.type=PEM`); a file-based PEM keystore must hold an encrypted PKCS#8 key,
and the JDK reads only PBES1 encryption there (it has no PBES2 SecretKeyFactory), hence 3DES.
The client's key is encrypted the modern way (PBES2, AES-256) to exercise `ssl.key.password`.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CERT_DAYS = "2"


@dataclass(frozen=True)
class Pki:
    ca_certificate: Path
    broker_keystore: Path
    """Encrypted PKCS#8 key, then the broker's certificate and the CA's: Kafka's PEM keystore."""
    broker_key_password: str
    client_certificate: Path
    client_key: Path
    """Encrypted PKCS#8 key of the client certificate (CN=<client_name>)."""
    client_key_password: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             str(path))


def _encrypt(key: Path, out: Path, password: str, scheme: tuple[str, str]) -> None:
    _openssl("pkcs8", "-topk8", *scheme, "-in", str(key), "-out", str(out),
             "-passout", f"pass:{password}")


def _sign(directory: Path, name: str, subject: str, extensions: str) -> Path:
    """A certificate for `<name>.key`, signed by the CA in `directory`."""
    key, request, certificate = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions)
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(request))
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(directory / "ca.pem"),
        "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", CERT_DAYS,
        "-sha256", "-extfile", str(extfile), "-out", str(certificate),
    )
    return certificate


def make_pki(directory: Path, client_name: str = "detector") -> Pki:
    """A CA, a broker certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _new_key(directory / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", str(directory / "ca.key"), "-subj", "/CN=test-ca",
        "-days", CERT_DAYS, "-sha256", "-out", str(directory / "ca.pem"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    broker_certificate = _sign(
        directory, "broker", "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    client_certificate = _sign(
        directory, "client", f"/CN={client_name}", "extendedKeyUsage=clientAuth\n"
    )
    broker_key_password = secrets.token_hex(12)
    client_key_password = secrets.token_hex(12)
    _encrypt(directory / "broker.key", directory / "broker.p8", broker_key_password,
             ("-v1", "PBE-SHA1-3DES"))
    _encrypt(directory / "client.key", directory / "client.p8", client_key_password,
             ("-v2", "aes-256-cbc"))
    keystore = directory / "broker-keystore.pem"
    keystore.write_text(
        "".join(
            path.read_text()
            for path in (directory / "broker.p8", broker_certificate, directory / "ca.pem")
        )
    )
    return Pki(
        ca_certificate=directory / "ca.pem",
        broker_keystore=keystore,
        broker_key_password=broker_key_password,
        client_certificate=client_certificate,
        client_key=directory / "client.p8",
        client_key_password=client_key_password,
    )
