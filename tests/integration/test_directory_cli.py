"""The directory commands end to end: a CA and identities from ``secchat ca``, a real server,
``secchat directory register / participants / trust``."""

from __future__ import annotations

from typer.testing import CliRunner

from secchat import pki
from secchat.app.cli_pki import ca_app
from secchat.app.exit_codes import ExitCode
from secchat.directory.cli import directory_app
from secchat.directory.trust import TrustStore
from tests.directory_support import ServerProcess


def test_register_and_list_from_the_command_line(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("SECCHAT_CA_PASSPHRASE", "ca-secret")
    monkeypatch.setenv("SECCHAT_PASSPHRASE", "peer-secret")
    ca_dir = tmp_path / "ca"
    assert runner.invoke(ca_app, ["init", "--dir", str(ca_dir), "--name", "CLI CA"]).exit_code == 0
    for name in ("alice", "bob"):
        r = runner.invoke(ca_app, ["issue", name, "--dir", str(ca_dir), "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    server = ServerProcess(ca_dir / "ca.pem", str(tmp_path / "dir.sqlite3")).start()
    trust = tmp_path / "alice-trust.json"
    try:
        for name in ("alice", "bob"):
            r = runner.invoke(directory_app, ["register", "--url", server.url, "--dir", str(tmp_path / name), "--trust-file", str(trust)])
            assert r.exit_code == 0, r.output
            assert f"registered {name}@CLI CA" in r.output
        r = runner.invoke(directory_app, ["participants", "--url", server.url, "--dir", str(tmp_path / "alice"), "--trust-file", str(trust)])
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert any(line.startswith("alice@CLI CA") and "accepted" in line for line in lines)
        assert any(line.startswith("bob@CLI CA") and " new " in line for line in lines)
        # wrong passphrase: one sentence, exit 1
        monkeypatch.setenv("SECCHAT_PASSPHRASE", "wrong")
        r = runner.invoke(directory_app, ["register", "--url", server.url, "--dir", str(tmp_path / "alice")])
        assert r.exit_code == ExitCode.PASSPHRASE and "wrong passphrase" in r.output
        assert "Traceback" not in r.output
    finally:
        server.close()
    bob_cert = pki.cert_from_pem((tmp_path / "bob" / "identity.pem").read_bytes())
    TrustStore(trust).accept(pki.identity_of(bob_cert), pki.fingerprint(bob_cert))
    r = runner.invoke(directory_app, ["trust", "list", "--trust-file", str(trust)])
    assert "bob@CLI CA" in r.output and pki.fingerprint(bob_cert) in r.output
    r = runner.invoke(directory_app, ["trust", "revoke", "bob@CLI CA", "--trust-file", str(trust)])
    assert r.exit_code == 0 and len(TrustStore(trust)) == 0
    r = runner.invoke(directory_app, ["trust", "revoke", "bob@CLI CA", "--trust-file", str(trust)])
    assert r.exit_code == ExitCode.REFUSED  # nothing to revoke: refused, not a bug (1)


def test_unreachable_directory_is_one_sentence(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("SECCHAT_PASSPHRASE", "carol passphrase")
    ca_key, ca_cert = pki.create_ca("X CA")
    key = pki.generate_key()
    cert = pki.issue_certificate(ca_key, ca_cert, "carol", key.public_key())
    d = tmp_path / "carol"
    pki.save_private_key(d / "identity.key", key, "carol passphrase")
    (d / "identity.pem").write_bytes(pki.cert_to_pem(cert))
    (d / "ca.pem").write_bytes(pki.cert_to_pem(ca_cert))
    r = runner.invoke(directory_app, ["register", "--url", "http://127.0.0.1:9", "--dir", str(d), "--trust-file", str(tmp_path / "t.json")])
    assert r.exit_code == ExitCode.UNREACHABLE and "unreachable" in r.output and "Traceback" not in r.output
