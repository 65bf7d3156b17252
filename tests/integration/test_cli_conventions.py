"""The command line's conventions, over real processes: --version, -h, python -m secchat, the
documented exit code of each error class, prompts, and the identity lifecycle in which nobody
but the CA operator touches the CA's key (init, request, ca sign, identity install, register)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secchat import pki
from secchat.app.exit_codes import MEANING, ExitCode, epilog, exit_code
from tests.directory_support import SRC, ServerProcess

ROOT = Path(__file__).resolve().parent.parent.parent
PASSPHRASE = "member passphrase"
CA_PASSPHRASE = "ca operator's passphrase"
CMD = [sys.executable, "-m", "secchat"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECCHAT_")}
    env.update(extra)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CMD, *args],
        env=env or _env(SECCHAT_PASSPHRASE=PASSPHRASE),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = run(*args, **kw)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def failed(code: ExitCode, *args: str, **kw) -> str:
    proc = run(*args, **kw)
    assert proc.returncode == code, (args, proc.returncode, code, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stderr


def digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def tree(home: Path) -> dict[str, str]:
    return digest(*sorted(home.rglob("*")))


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-ca")
    ok("ca", "init", "--dir", str(root / "ca"), env=_env(SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE))
    return root / "ca"


# --------------------------------------------------------------------------- basics


def test_version_help_and_python_m():
    from secchat import __version__

    for cmd in (CMD, [sys.executable, "-c", "from secchat.app.cli import main; main()"]):
        proc = subprocess.run(
            [*cmd, "--version"], env=_env(), capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0 and proc.stdout.strip() == f"secchat {__version__}", proc
    top = ok("-h").stdout
    assert "Exit codes" in top and "--install-completion" in top and "--verbose" in top
    for sub in (
        ["ca", "-h"],
        ["ca", "sign", "-h"],
        ["join", "-h"],
        ["identity", "show", "-h"],
        ["directory", "serve", "-h"],
        ["trust", "accept", "-h"],
    ):
        assert "Usage" in ok(*sub).stdout, sub


def test_readme_and_help_document_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    text = epilog()
    for code in ExitCode:
        assert f"| {int(code)} | {MEANING[code]} |" in readme, code
        assert f"{int(code):>3}  {MEANING[code]}" in text


def test_each_documented_exit_code(tmp_path, ca):
    """One real failure per class, each with its own code and one sentence."""
    server = ServerProcess(ca / "ca.pem", f"sqlite:///{tmp_path / 'dir.sqlite3'}").start()
    try:
        env = _env(SECCHAT_PASSPHRASE=PASSPHRASE, SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE)
        alice = tmp_path / "alice"
        ok(
            "init",
            "alice",
            "--ca-dir",
            str(ca),
            "--directory",
            server.url,
            "--home",
            str(alice),
            env=env,
        )
        ok("register", "--home", str(alice), env=env)

        assert ok("--version").returncode == ExitCode.OK
        failed(ExitCode.USAGE, "join")  # missing argument
        failed(ExitCode.USAGE, "--no-such-option")
        assert "no SecChat profile" in failed(
            ExitCode.SETUP, "conferences", "--home", str(tmp_path / "nobody")
        )
        assert "wrong passphrase" in failed(
            ExitCode.PASSPHRASE,
            "conferences",
            "--home",
            str(alice),
            env=_env(SECCHAT_PASSPHRASE="not the passphrase"),
        )
        assert "at least 8 characters" in failed(
            ExitCode.PASSPHRASE,
            "init",
            "eve",
            "--home",
            str(tmp_path / "eve"),
            env=_env(SECCHAT_PASSPHRASE="short"),
        )
        assert not (tmp_path / "eve").exists()
        assert "no conference 'nowhere'" in failed(
            ExitCode.REFUSED, "join", "nowhere", "--home", str(alice)
        )
        assert "already exists" in failed(
            ExitCode.EXISTS, "init", "alice", "--home", str(alice), env=env
        )

        # untrusted: a certificate for another key is refused at install
        mallory = tmp_path / "mallory"
        ok("init", "alice", "--home", str(mallory), "--directory", server.url)
        ok(
            "ca",
            "sign",
            str(alice / "identity" / "request.pem"),
            "--dir",
            str(ca),
            "--out",
            str(tmp_path / "alice.pem"),
            env=env,
        )
        assert "not for the key" in failed(
            ExitCode.UNTRUSTED,
            "identity",
            "install",
            str(tmp_path / "alice.pem"),
            "--home",
            str(mallory),
        )
    finally:
        server.close()

    # unreachable: the directory is gone
    assert "unreachable" in failed(ExitCode.UNREACHABLE, "conferences", "--home", str(alice))
    assert "unreachable" in failed(ExitCode.UNREACHABLE, "register", "--home", str(alice))

    # interrupted: Ctrl-C while a command waits on a directory that never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        hung = tmp_path / "hung"
        ok(
            "init",
            "hung",
            "--ca-dir",
            str(ca),
            "--home",
            str(hung),
            "--directory",
            f"http://127.0.0.1:{listener.getsockname()[1]}",
            env=env,
        )
        proc = subprocess.Popen(
            [*CMD, "conferences", "--home", str(hung)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        accepted = threading.Event()
        conns: list[socket.socket] = []

        def accept() -> None:
            conns.append(listener.accept()[0])
            accepted.set()

        threading.Thread(target=accept, daemon=True).start()
        try:
            assert accepted.wait(60), "the command never asked the directory"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == ExitCode.INTERRUPTED, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.kill()
            proc.wait()
            for c in conns:
                c.close()

    # unexpected failure: anything that is not one of our errors
    assert exit_code(RuntimeError("bug")) == ExitCode.FAILURE


def test_no_profile_is_said_before_any_passphrase_prompt(tmp_path):
    env = _env()  # no passphrase anywhere: a prompt would read the closed stdin and fail otherwise
    for command in (
        ["conferences"],
        ["trust", "accept", "bob", "ab" * 16],
        ["register"],
        ["join", "room"],
    ):
        err = failed(
            ExitCode.SETUP, *command, "--home", str(tmp_path / "nobody"), env=env, input=""
        )
        assert "no SecChat profile" in err and "passphrase" not in err, command


def test_prompts_name_the_profile(tmp_path, ca):
    home = tmp_path / "dora"
    ok(
        "init",
        "dora",
        "--ca-dir",
        str(ca),
        "--home",
        str(home),
        env=_env(SECCHAT_PASSPHRASE=PASSPHRASE, SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE),
    )
    proc = run("conferences", "--home", str(home), env=_env(), input="")
    assert f"passphrase for dora's profile in {home}" in proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.PASSPHRASE


# --------------------------------------------------------------------------- init keeps what exists


def test_init_never_destroys_a_profile_without_a_confirmed_flag(tmp_path, ca):
    env = _env(SECCHAT_PASSPHRASE=PASSPHRASE, SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE)
    home = tmp_path / "erin"
    out = ok("init", "erin", "--ca-dir", str(ca), "--home", str(home), env=env).stdout
    assert f"next: secchat register --home {home}" in out
    from secchat.app.history import HistoryStore

    HistoryStore(home / "history.sqlite3", PASSPHRASE).close()
    before = tree(home)
    assert "already exists" in failed(
        ExitCode.EXISTS, "init", "erin", "--ca-dir", str(ca), "--home", str(home), env=env
    )
    assert "add --yes" in failed(
        ExitCode.EXISTS,
        "init",
        "erin",
        "--ca-dir",
        str(ca),
        "--home",
        str(home),
        "--replace",
        env=env,
        input="",
    )
    assert tree(home) == before
    ok("init", "erin", "--ca-dir", str(ca), "--home", str(home), "--replace", "--yes", env=env)
    (aside,) = home.glob("replaced-*")
    kept = {str(p).replace(str(aside), str(home)): h for p, h in tree(aside).items()}
    for path in (home / "identity" / "identity.key", home / "history.sqlite3"):
        assert kept[str(path)] == before[str(path)]  # moved aside whole, not deleted
    assert digest(home / "identity" / "identity.key") != {
        str(home / "identity" / "identity.key"): before[str(home / "identity" / "identity.key")]
    }
    assert not (home / "history.sqlite3").exists()


def test_init_prints_the_home_the_user_needs(tmp_path, ca):
    env = _env(SECCHAT_PASSPHRASE=PASSPHRASE)
    out = ok("init", "fay", "--home", "fay home", env=env, cwd=tmp_path).stdout
    assert "secchat identity install fay.pem --home 'fay home'" in out
    assert "secchat register --home 'fay home'" in out
    out = ok(
        "init", "gil", env=_env(SECCHAT_PASSPHRASE=PASSPHRASE, SECCHAT_HOME=str(tmp_path / "gil"))
    ).stdout
    assert "secchat register" in out and "--home" not in out  # SECCHAT_HOME is set: nothing to add


# --------------------------------------------------------------------------- identity lifecycle


def test_three_users_request_sign_install_register(tmp_path, ca):
    """Nobody but the CA operator touches the CA's key: the users' commands get neither the CA
    directory nor its passphrase, and each private key never leaves its profile."""
    server = ServerProcess(ca / "ca.pem", f"sqlite:///{tmp_path / 'dir.sqlite3'}").start()
    user_env = _env(SECCHAT_PASSPHRASE=PASSPHRASE)  # no CA passphrase, no --ca-dir
    operator_env = _env(SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE)
    try:
        keys = {}
        for name in ("alice", "bob", "carol"):
            home = tmp_path / name
            out = ok(
                "init", name, "--home", str(home), "--directory", server.url, env=user_env
            ).stdout
            request = home / "identity" / "request.pem"
            assert f"secchat ca sign {request}" in out
            keys[name] = (home / "identity" / "identity.key").read_bytes()
            assert b"PRIVATE KEY" not in request.read_bytes()
            assert "not installed yet" in failed(
                ExitCode.SETUP, "register", "--home", str(home), env=user_env
            )

            # the CA operator sees only the request
            signed = tmp_path / f"{name}.pem"
            err = ok(
                "ca", "sign", str(request), "--dir", str(ca), "--out", str(signed), env=operator_env
            ).stderr
            assert f"signed {name}@SecChat CA" in err

            out = ok("identity", "install", str(signed), "--home", str(home), env=user_env).stdout
            assert (
                f"installed {name}@SecChat CA" in out
                and f"next: secchat register --home {home}" in out
            )
            shown = json.loads(
                ok("identity", "show", "--json", "--home", str(home), env=user_env).stdout
            )
            assert shown["identity"] == f"{name}@SecChat CA" and shown["valid"] is True
            assert shown["key_store"].startswith("scrypt N=2^17")
            assert (home / "identity" / "identity.key").read_bytes() == keys[name]
            assert (
                f"registered {name}@SecChat CA"
                in ok("register", "--home", str(home), env=user_env).stdout
            )
        listing = ok("participants", "--home", str(tmp_path / "alice"), env=user_env).stdout
        assert all(f"{n}@SecChat CA" in listing for n in ("alice", "bob", "carol"))

        # a key store as SecChat 0.1 wrote it (PKCS#8 under PBKDF2, 0644) opens and is upgraded
        store = tmp_path / "alice" / "identity" / "identity.key"
        key = pki.load_private_key(store, PASSPHRASE)
        store.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(PASSPHRASE.encode()),
            )
        )
        store.chmod(0o644)
        shown = json.loads(
            ok("identity", "show", "--json", "--home", str(tmp_path / "alice")).stdout
        )
        assert shown["key_store"].startswith("PKCS#8 with PBKDF2")
        ok("participants", "--home", str(tmp_path / "alice"), env=user_env)
        shown = json.loads(
            ok("identity", "show", "--json", "--home", str(tmp_path / "alice")).stdout
        )
        assert (
            shown["key_store"] == "scrypt N=2^17 r=8 p=1" and store.stat().st_mode & 0o777 == 0o600
        )
        assert (
            pki.load_private_key(store, PASSPHRASE).private_bytes_raw() == key.private_bytes_raw()
        )

        # renewal: a new request for the same key, signed and installed the same way
        home = tmp_path / "alice"
        key_store_before = store.read_bytes()
        out = ok("identity", "request", "--home", str(home), env=user_env).stdout
        assert "for alice's current key" in out
        renewed = tmp_path / "alice-renewed.pem"
        request = home / "identity" / "request.pem"
        ok(
            "ca",
            "sign",
            str(request),
            "--dir",
            str(ca),
            "--days",
            "30",
            "--out",
            str(renewed),
            env=operator_env,
        )
        ok("identity", "install", str(renewed), "--home", str(home), env=user_env)
        after = json.loads(ok("identity", "show", "--json", "--home", str(home)).stdout)
        assert after["valid"] is True and after["fingerprint"] != shown["fingerprint"]
        assert store.read_bytes() == key_store_before  # the same key, not even re-encrypted
    finally:
        server.close()


def test_ca_sign_refuses_a_forged_request(tmp_path, ca):
    from cryptography import x509

    key, other = pki.generate_key(), pki.generate_key()
    good = pki.make_request(key, "zed")
    # a request naming zed, carrying other's public key but signed by key: no proof of possession
    forged_der = bytearray(good.public_bytes(serialization.Encoding.DER))
    old = key.public_key().public_bytes_raw()
    i = forged_der.find(old)
    forged_der[i : i + 32] = other.public_key().public_bytes_raw()
    forged = x509.load_der_x509_csr(bytes(forged_der))
    path = tmp_path / "forged.pem"
    path.write_bytes(pki.request_to_pem(forged))
    err = failed(
        ExitCode.UNTRUSTED,
        "ca",
        "sign",
        str(path),
        "--dir",
        str(ca),
        env=_env(SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE),
    )
    assert "not signed by the key" in err


# --------------------------------------------------------------------------- logging


def test_verbose_and_log_file_configure_logging(tmp_path):
    from typer.testing import CliRunner

    from secchat.app.cli import app, configure_logging

    log = tmp_path / "secchat.log"
    runner = CliRunner()
    try:
        result = runner.invoke(
            app, ["-v", "--log-file", str(log), "identity", "show", "--home", str(tmp_path)]
        )
        assert result.exit_code == ExitCode.SETUP
        links = logging.getLogger("secchat.net.links")
        assert links.isEnabledFor(logging.INFO) and not links.isEnabledFor(logging.DEBUG)
        links.info(
            "cannot reach %s at %s:%d (%s); retrying in %.2fs",
            "bob",
            "127.0.0.1",
            9,
            "refused",
            0.2,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        assert (
            "INFO secchat.net.links: cannot reach bob at 127.0.0.1:9 (refused); retrying"
            in log.read_text()
        )
        runner.invoke(app, ["-q", "identity", "show", "--home", str(tmp_path)])
        assert not logging.getLogger("secchat").isEnabledFor(logging.WARNING)
    finally:
        configure_logging(0, False, None)  # back to the default: warnings on stderr
