"""Shared fixtures and helpers of the directory tests (unit and integration).

``db_url`` is parametrized over SQLite and PostgreSQL.  Each PostgreSQL test gets a fresh schema
(via ``search_path`` in the URL), dropped afterwards, so concurrent runs never collide.  With no
server at 127.0.0.1:5432 those tests skip, unless ``SECCHAT_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import secchat
from secchat import pki
from secchat.directory.auth import sign_request

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")
SRC = str(Path(secchat.__file__).resolve().parent.parent)

_pg_user: str | bool | None = False  # False: not probed yet


def postgres_user() -> str | None:
    """The first PostgreSQL role that connects, or None (probed once per process)."""
    global _pg_user
    if _pg_user is False:
        import psycopg

        _pg_user = None
        for user in PG_USERS:
            try:
                psycopg.connect(
                    host=PG_HOST, port=PG_PORT, user=user, dbname=PG_DB, connect_timeout=2
                ).close()
            except psycopg.Error:
                continue
            _pg_user = user
            break
    return _pg_user  # type: ignore[return-value]


def require_postgres() -> str:
    user = postgres_user()
    if user is None:
        reason = f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT} (database {PG_DB!r})"
        if os.environ.get("SECCHAT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " and SECCHAT_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip(reason)
    return user


@dataclass
class PgSchema:
    user: str
    schema: str

    @property
    def url(self) -> str:
        return (
            f"postgresql://{self.user}@{PG_HOST}:{PG_PORT}/{PG_DB}"
            f"?options=-csearch_path%3D{self.schema}"
        )


def _pg_admin(user: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=PG_DB, autocommit=True) as conn:
        conn.execute(sql)


def fresh_pg_schema() -> Iterator[str]:
    user = require_postgres()
    schema = f"secchat_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _pg_admin(user, f'CREATE SCHEMA "{schema}"')
    try:
        yield PgSchema(user, schema).url
    finally:
        _pg_admin(user, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'directory.sqlite3'}"
    else:
        yield from fresh_pg_schema()


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class User:
    name: str
    key: Ed25519PrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return pki.cert_to_pem(self.cert).decode("ascii")


class World:
    """A CA and the users it issued, created lazily by name."""

    def __init__(self, name: str = "Test CA") -> None:
        self.ca_key, self.ca_cert = pki.create_ca(name)
        self.users: dict[str, User] = {}

    def user(self, name: str, **issue) -> User:
        if name not in self.users or issue:
            key = pki.generate_key()
            cert = pki.issue_certificate(self.ca_key, self.ca_cert, name, key.public_key(), **issue)
            user = User(name, key, cert)
            if issue:
                return user
            self.users[name] = user
        return self.users[name]


@pytest.fixture(scope="session")
def world() -> World:
    return World()


@pytest.fixture
def ca_pem(tmp_path, world) -> Path:
    """The ``world``'s CA certificate in a file, for ``secchat directory serve --ca``."""
    path = tmp_path / "ca.pem"
    path.write_bytes(pki.cert_to_pem(world.ca_cert))
    return path


#: The name of the in-process test directory (``http://directory`` over httpx's ASGI transport).
TEST_DIRECTORY = "http://directory"


def signed(
    user: User,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    directory: str = "http://directory:80",
) -> dict[str, str]:
    """Authentication headers for a hand-made request (for the directory ``directory``)."""
    return sign_request(
        pki.signer_of(user.key),
        user.name,
        directory,
        method,
        path,
        body,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        nonce=nonce or os.urandom(16).hex(),
    )


# --------------------------------------------------------------------------- a real server process


def free_listener() -> socket.socket:
    """A listening socket on a port the OS chose; handed to the server, so there is no race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def spawn_serving(cmd: list[str], env: dict[str, str], sock: socket.socket, ready_url: str, *,
                  timeout: float = 20.0, cwd: str | None = None,
                  verify: ssl.SSLContext | bool = True) -> subprocess.Popen:
    """Start ``cmd`` (handed the listening ``sock``) and wait, bounded, until ``ready_url`` answers 200."""
    proc = subprocess.Popen(
        cmd, env=env, pass_fds=(sock.fileno(),), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2:4]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=1.0, verify=verify).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"{cmd[2:4]} did not become ready")


def kill_process(proc: subprocess.Popen | None) -> None:
    """SIGKILL now (a crash), and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; close its stderr pipe."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc is not None and proc.stderr:
        proc.stderr.close()


@dataclass(frozen=True)
class TlsFiles:
    """A directory's TLS certificate (``cert``, ``key``) and the CA bundle clients verify it by."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",), *, ca_name: str = "Directory TLS CA") -> TlsFiles:
    """A TLS CA and a server certificate for ``hosts`` (IP addresses or DNS names), as an
    operator would get from the organisation's CA: ECDSA P-256, not the members' Ed25519 PKI."""
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name(ca_name)).issuer_name(name(ca_name))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "tls-ca.pem", directory / "tls-cert.pem", directory / "tls-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    files.key.chmod(0o600)
    return files


class ServerProcess:
    """``python -m secchat.directory serve`` on an inherited socket; ``url`` once it is ready
    (``/v1/ready``: its database answers); over HTTPS with ``tls``."""

    def __init__(
        self, ca_pem: Path, db: str | None, *, env: dict[str, str] | None = None, names: tuple[str, ...] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.ca_pem, self.db, self.extra_env, self.names, self.tls = ca_pem, db, env or {}, names, tls
        self.sock = free_listener()
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if k != "SECCHAT_DIRECTORY_DB"}
        env.update(self.extra_env)
        env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "secchat.directory", "serve", "--ca", str(self.ca_pem), "--fd", str(self.sock.fileno())]
        if self.db is not None:
            cmd += ["--db", self.db]
        for name in self.names:
            cmd += ["--name", name]
        verify: ssl.SSLContext | bool = True
        if self.tls is not None:
            cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            verify = self.tls.context()
        self.proc = spawn_serving(cmd, env, self.sock, self.url + "/v1/ready", timeout=timeout, verify=verify)
        return self

    def kill(self) -> None:
        kill_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)

    def close(self) -> None:
        self.stop()
        self.sock.close()
