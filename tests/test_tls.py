"""D7 / E6(e): production mode behind real TLS - ``fhirserver serve --certfile --keyfile`` (gunicorn).

A self-signed certificate for 127.0.0.1 is made here with ``cryptography``; the server runs
with FHIRSERVER_ENV=production and every required secret. Over TLS the test checks the
cookies of the login page and the portal (``__Host-``, Secure, HttpOnly, SameSite, Path=/)
and HSTS on /auth, /portal and /fhir. TLS 1.2 and 1.3 connect; TLS 1.0 and 1.1 are refused.
The client really offers the old versions (OpenSSL ``@SECLEVEL=0``): a control server in
this process, which allows them, accepts the very same client contexts, so the refusal
is the server's and the check can fail.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fhirserver.security_headers import HSTS
from tests.support import ROOT, TEST_KEY, free_port, test_env, wait_until

OLD_VERSIONS = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]
GOOD_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@dataclass(frozen=True)
class Pki:
    cert: Path
    key: Path


def _self_signed(folder: Path) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pki = Pki(folder / "cert.pem", folder / "key.pem")
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


def client_context(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers exactly ``version``; old versions with OpenSSL's security level 0."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.cert))
    context.minimum_version = version
    context.maximum_version = version
    if version in OLD_VERSIONS:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # SHA-1 suites and old protocols allowed again
    return context


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The negotiated protocol version, or raise ssl.SSLError / OSError when refused."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


@contextmanager
def control_server(pki: Pki) -> Iterator[int]:
    """A TLS server in this process that allows TLS 1.0 and newer: proof that the client offers them."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(pki.cert), str(pki.key))
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with suppress(OSError), server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()
        thread.join(5)


@dataclass
class TlsServer:
    port: int
    pki: Pki
    log: Path

    def get(self, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=15, context=client_context(self.pki, ssl.TLSVersion.TLSv1_3)
        )
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response


def _answers(server: TlsServer) -> bool:
    try:
        return server.get("/fhir/metadata").status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = _self_signed(tmp)
    port = free_port()
    env = test_env(
        tmp,
        database_url,
        port,
        FHIRSERVER_ENV="production",
        BASE_URL=f"https://127.0.0.1:{port}",
        SECRET_KEY="tls-test-secret-" + "x" * 32,
        ENCRYPTION_KEYS=f"test1:{TEST_KEY}",
        JWT_SIGNING_KEYS=f"tls1:{_jwt_key(tmp)}",
        PORTAL_CLIENT_SECRET="tls-portal-secret",
        CONSOLE_CLIENT_SECRET="tls-console-secret",
        PORTAL_SESSION_ENCRYPTION_KEY=TEST_KEY,
    )
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp)), **env}
    cmd = [sys.executable, "-m", "fhirserver.cli", "serve", "--bind", f"127.0.0.1:{port}"]
    cmd += ["--workers", "1", "--threads", "2", "--certfile", str(pki.cert), "--keyfile", str(pki.key)]
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = TlsServer(port, pki, log)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(server), 60, "gunicorn to answer over TLS")
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{log.read_text()[-4000:]}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _jwt_key(folder: Path) -> Path:
    from fhirserver.config import _new_rsa_pem

    path = folder / "jwt.pem"
    path.write_text(_new_rsa_pem())
    return path


def _cookie(response: http.client.HTTPResponse, name: str) -> set[str]:
    headers = [h for h in response.headers.get_all("Set-Cookie") or [] if h.startswith(name + "=")]
    assert len(headers) == 1, (name, response.headers.get_all("Set-Cookie"))
    return {part.strip() for part in headers[0].split(";")[1:]}


def test_D7_production_cookies_over_tls(tls_server: TlsServer) -> None:
    login = tls_server.get("/auth/login")
    assert login.status == 200
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= _cookie(login, "__Host-fhir_auth_pre")
    portal = tls_server.get("/portal/")
    assert portal.status == 200
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= _cookie(portal, "__Host-webmail_portal_session")
    for response in (login, portal):
        cookies = " ".join(response.headers.get_all("Set-Cookie") or [])
        assert "Domain=" not in cookies


@pytest.mark.parametrize("path", ["/auth/login", "/auth/jwks", "/portal/", "/fhir/metadata", "/fhir/Patient"])
def test_D7_hsts_on_every_path_over_tls(tls_server: TlsServer, path: str) -> None:
    response = tls_server.get(path)
    assert response.headers.get_all("Strict-Transport-Security") == [HSTS], path


@pytest.mark.parametrize("version", GOOD_VERSIONS, ids=lambda v: v.name)
def test_D7_tls_1_2_and_1_3_connect(tls_server: TlsServer, version: ssl.TLSVersion) -> None:
    assert handshake(tls_server.port, client_context(tls_server.pki, version)) == version.name.replace("_", ".")


@pytest.mark.parametrize("version", OLD_VERSIONS, ids=lambda v: v.name)
def test_D7_tls_below_1_2_is_refused(tls_server: TlsServer, version: ssl.TLSVersion) -> None:
    context = client_context(tls_server.pki, version)
    with control_server(tls_server.pki) as control_port:  # the client does offer this version
        assert handshake(control_port, context) == version.name.replace("_", ".")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(tls_server.port, context)
