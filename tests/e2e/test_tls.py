"""`fulfillment serve --ssl-certfile FILE --ssl-keyfile FILE` serves HTTPS: a real server
with a self-signed certificate made here, and the one-line refusals of bad options."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .server import start_server

CLI = Path(sys.executable).with_name("fulfillment")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fulfillment test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_serve_with_a_certificate_and_key_serves_https(database_url: str, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(certfile))
    args = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    with start_server(database_url, args=args, log_dir=tmp_path, verify=trusted) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with server.client() as client:
            health = client.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok"
            assert health.headers["cache-control"] == "no-store"
            # The certificate is the one given (checked against it, by name and address).
            assert client.get("/orders").status_code == 200
        with httpx.Client(verify=trusted) as other:
            assert other.get(server.url.replace("127.0.0.1", "localhost") + "/health").is_success
        # No plain HTTP on that port.
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https:", "http:") + "/health", timeout=5)
        assert "serving on https://127.0.0.1:" in server.output()
        assert "dashboard at https://127.0.0.1:" in server.output()


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    database = tmp_path / "never.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    env["FULFILLMENT_DATABASE_URL"] = f"sqlite:///{database}"
    done = subprocess.run(
        [str(CLI), "serve", "--port", "0", *args],
        env={**env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not database.exists(), "refused before it touched the database"
    return done


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: configuration:"), lines
    for word in words:
        assert word in lines[0], lines


def test_one_of_the_two_options_alone_is_refused(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    assert_refused(serve(tmp_path, "--ssl-certfile", str(certfile)), "--ssl-keyfile")
    assert_refused(serve(tmp_path, "--ssl-keyfile", str(keyfile)), "--ssl-certfile")


def test_a_missing_or_unreadable_or_wrong_file_is_refused(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    missing = tmp_path / "nope.pem"
    assert_refused(
        serve(tmp_path, "--ssl-certfile", str(missing), "--ssl-keyfile", str(keyfile)),
        str(missing),
        "cannot be read",
    )
    assert_refused(
        serve(tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(tmp_path)),
        "--ssl-keyfile",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert_refused(
        serve(tmp_path, "--ssl-certfile", str(garbage), "--ssl-keyfile", str(keyfile)),
        "not a PEM certificate",
    )
    other = tmp_path / "other"
    other.mkdir()
    other_certfile, _ = self_signed(other)  # a certificate, but not of this key
    assert_refused(
        serve(tmp_path, "--ssl-certfile", str(other_certfile), "--ssl-keyfile", str(keyfile)),
        "not a PEM certificate",
    )
