"""The PKI: certificates, verification failures by code, the encrypted key store and its CLI."""

from __future__ import annotations

import base64
import json
import os
import stat
import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from secchat import pki
from secchat.app.cli_pki import ca_app, identity_app
from secchat.app.exit_codes import ExitCode
from secchat.crypto import CryptoError
from secchat.passphrase import PASSPHRASE_KDF

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("Test CA", now=NOW)


@pytest.fixture(scope="module")
def alice(ca):
    ca_key, ca_cert = ca
    key = pki.generate_key()
    return key, pki.issue_certificate(ca_key, ca_cert, "alice", key.public_key(), now=NOW)


def test_issue_and_verify(ca, alice):
    _, ca_cert = ca
    key, cert = alice
    identity = pki.verify_certificate(cert, [ca_cert], now=NOW)
    assert identity == pki.Identity("alice", "Test CA") == pki.identity_of(cert)
    assert str(identity) == "alice@Test CA"
    fp = pki.fingerprint(cert)
    assert len(fp) == 64 and fp == fp.lower() and ":" not in fp
    # signer and verifier agree and are bound to the certificate's key
    sig = pki.signer_of(key).sign(b"hello")
    pki.verifier_of(cert).verify(b"hello", sig)
    with pytest.raises(CryptoError):
        pki.verifier_of(cert).verify(b"hellO", sig)


def test_pem_round_trip_and_bundle(ca, alice):
    _, ca_cert = ca
    _, cert = alice
    assert pki.cert_from_pem(pki.cert_to_pem(cert)) == cert
    assert pki.certs_from_pem(pki.certs_to_pem([ca_cert, cert])) == [ca_cert, cert]


@pytest.mark.parametrize("junk", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_bad_pem(junk):
    with pytest.raises(pki.PkiError) as err:
        pki.cert_from_pem(junk)
    assert err.value.code == "bad_pem"
    with pytest.raises(pki.PkiError) as err:
        pki.certs_from_pem(junk)
    assert err.value.code == "bad_pem"


def _code(cert, trusted, now=NOW) -> str:
    with pytest.raises(pki.PkiError) as err:
        pki.verify_certificate(cert, trusted, now=now)
    assert str(err.value).strip() and "\n" not in str(err.value)
    return err.value.code


def test_other_ca(alice):
    _, other = pki.create_ca("Other CA", now=NOW)
    assert _code(alice[1], [other]) == "unknown_ca"


def test_same_name_other_key_is_bad_signature(alice):
    _, impostor = pki.create_ca("Test CA", now=NOW)
    assert _code(alice[1], [impostor]) == "bad_signature"


def test_one_of_several_trusted_cas(ca, alice):
    _, impostor = pki.create_ca("Test CA", now=NOW)
    _, other = pki.create_ca("Other CA", now=NOW)
    assert pki.verify_certificate(alice[1], [other, impostor, ca[1]], now=NOW).name == "alice"


def test_expired(ca, alice):
    assert _code(alice[1], [ca[1]], now=NOW + timedelta(days=366)) == "expired"


def test_not_yet_valid(ca):
    ca_key, ca_cert = ca
    cert = pki.issue_certificate(
        ca_key, ca_cert, "bob", pki.generate_key().public_key(), not_before=NOW + timedelta(days=1), now=NOW
    )
    assert _code(cert, [ca_cert]) == "not_yet_valid"
    assert pki.verify_certificate(cert, [ca_cert], now=NOW + timedelta(days=2)).name == "bob"


def test_expired_ca(ca):
    ca_key, ca_cert = pki.create_ca("Short CA", valid_days=1, now=NOW)
    cert = pki.issue_certificate(ca_key, ca_cert, "carol", pki.generate_key().public_key(), now=NOW)
    assert _code(cert, [ca_cert], now=NOW + timedelta(days=2)) == "expired"


def test_ca_certificate_used_as_leaf(ca):
    assert _code(ca[1], [ca[1]]) == "not_a_leaf"


def test_leaf_used_as_ca(ca, alice):
    alice_key, alice_cert = alice
    mallory = pki.issue_certificate(alice_key, alice_cert, "mallory", pki.generate_key().public_key(), now=NOW)
    assert _code(mallory, [ca[1], alice_cert]) == "not_a_ca"


def test_tampered_signature(ca, alice):
    der = bytearray(alice[1].public_bytes(pki.serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature, the last field of the DER
    tampered = pki.x509.load_der_x509_certificate(bytes(der))
    assert _code(tampered, [ca[1]]) == "bad_signature"


def test_non_ed25519_key_has_no_verifier(ca):
    ca_key, ca_cert = ca
    ec_key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue_certificate(ca_key, ca_cert, "ec", ec_key.public_key(), now=NOW)
    with pytest.raises(pki.PkiError) as err:
        pki.verifier_of(cert)
    assert err.value.code == "unsupported_key"
    with pytest.raises(pki.PkiError) as err:
        pki.signer_of(ec_key)
    assert err.value.code == "unsupported_key"


def test_key_store(tmp_path, alice):
    key = alice[0]
    path = tmp_path / "sub" / "alice.key"
    pki.save_private_key(path, key, "correct horse")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    stored = json.loads(path.read_bytes())
    assert stored["format"] == pki.KEY_STORE_FORMAT and stored["kdf"] == "scrypt"
    assert stored["n"] >= 1 << 17 and (stored["r"], stored["p"]) == (8, 1)
    assert key.private_bytes_raw() not in base64.b64decode(stored["ciphertext"])
    loaded = pki.load_private_key(path, "correct horse")
    assert pki.signer_of(loaded).public_bytes == pki.signer_of(key).public_bytes
    assert [p.name for p in path.parent.iterdir()] == ["alice.key"]  # no temporary left behind


def test_wrong_passphrase(tmp_path, alice):
    path = tmp_path / "alice.key"
    pki.save_private_key(path, alice[0], "right passphrase")
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(path, "wrong passphrase")
    assert err.value.code == "wrong_passphrase"
    assert str(err.value) == f"wrong passphrase for key store {path}"


def test_key_store_errors(tmp_path, alice):
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(tmp_path / "missing.key", "x")
    assert err.value.code == "no_key_store"
    (tmp_path / "junk.key").write_bytes(b"junk")
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(tmp_path / "junk.key", "x")
    assert err.value.code == "bad_pem"
    for short in ("", "x", "1234567"):
        with pytest.raises(pki.PkiError) as err:
            pki.save_private_key(tmp_path / "a.key", alice[0], short)
        assert err.value.code == "weak_passphrase"
        assert str(err.value).startswith("a passphrase needs at least 8 characters")
    assert not (tmp_path / "a.key").exists()
    tampered = tmp_path / "tampered.key"
    pki.save_private_key(tampered, alice[0], "correct horse")
    stored = json.loads(tampered.read_bytes())
    stored["n"] = 1 << 16  # the parameters are authenticated: a downgrade is not a passphrase
    tampered.write_text(json.dumps(stored))
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(tampered, "correct horse")
    assert err.value.code == "wrong_passphrase"
    stored["n"] = 1 << 40  # a hostile file cannot make us allocate without bound
    tampered.write_text(json.dumps(stored))
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(tampered, "correct horse")
    assert err.value.code == "bad_pem"


def _legacy_key_store(path, key, passphrase):
    """A key store as SecChat 0.1 wrote it: PKCS#8 PEM under PBKDF2, 0644 in a 0755 folder."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ))
    os.chmod(path, 0o644)


def test_old_key_store_opens_and_is_upgraded_in_place(tmp_path, alice):
    path = tmp_path / "identity" / "identity.key"
    _legacy_key_store(path, alice[0], "pw")  # old stores may have short passphrases: still open
    assert pki.key_store_kdf(path).startswith("PKCS#8 with PBKDF2")
    loaded = pki.load_private_key(path, "pw")
    assert loaded.private_bytes_raw() == alice[0].private_bytes_raw()
    stored = json.loads(path.read_bytes())
    assert stored["format"] == pki.KEY_STORE_FORMAT and stored["n"] >= 1 << 17
    assert pki.key_store_kdf(path) == "scrypt N=2^17 r=8 p=1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]
    upgraded = path.read_bytes()
    assert pki.load_private_key(path, "pw").private_bytes_raw() == alice[0].private_bytes_raw()
    assert path.read_bytes() == upgraded  # current stores are not rewritten
    with pytest.raises(pki.PkiError) as err:
        pki.load_private_key(path, "not it")
    assert err.value.code == "wrong_passphrase"


def test_failed_upgrade_leaves_the_old_key_store_whole(tmp_path, alice, monkeypatch):
    path = tmp_path / "identity.key"
    _legacy_key_store(path, alice[0], "old passphrase")
    before = path.read_bytes()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pki.os, "replace", no_rename)
    loaded = pki.load_private_key(path, "old passphrase")  # still usable; upgraded next time
    assert loaded.private_bytes_raw() == alice[0].private_bytes_raw()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]  # no temporary left
    monkeypatch.undo()
    pki.load_private_key(path, "old passphrase")
    assert json.loads(path.read_bytes())["format"] == pki.KEY_STORE_FORMAT


def test_key_store_kdf_and_unlock_time(tmp_path, alice, capsys):
    """Prints the KDF and the median unlock time; unlocking stays under about a second."""
    path = tmp_path / "identity.key"
    pki.save_private_key(path, alice[0], "correct horse")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        pki.load_private_key(path, "correct horse")
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\nkey store: {pki.key_store_kdf(path)}, unlock median {median * 1000:.0f} ms"
              f" (load {os.getloadavg()[0]:.2f})")
    assert PASSPHRASE_KDF.n >= 1 << 17
    assert median < 3.0  # ~0.4 s on the development machine; generous for a loaded CI box


def test_tighten_private(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    f = d / "k"
    f.write_bytes(b"")
    os.chmod(f, 0o644)
    pki.tighten_private(d)
    pki.tighten_private(f)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert pki.make_private_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700


# --------------------------------------------------------------------------- CLI


def test_cli_ca_init_issue_show(tmp_path, monkeypatch):
    monkeypatch.delenv("SECCHAT_PASSPHRASE", raising=False)
    monkeypatch.delenv("SECCHAT_CA_PASSPHRASE", raising=False)
    runner = CliRunner()
    ca_dir, out = tmp_path / "ca", tmp_path / "alice"
    pf = tmp_path / "pass"
    pf.write_text("s3cret-passphrase\n")
    result = runner.invoke(ca_app, ["init", "--dir", str(ca_dir), "--name", "Conf CA", "--passphrase-file", str(pf)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    monkeypatch.setenv("SECCHAT_CA_PASSPHRASE", "s3cret-passphrase")
    monkeypatch.setenv("SECCHAT_PASSPHRASE", "alice-pass")
    result = runner.invoke(ca_app, ["issue", "alice", "--dir", str(ca_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "alice-pass" not in result.output
    key = pki.load_private_key(out / pki.IDENTITY_KEY_FILE, "alice-pass")
    cert = pki.cert_from_pem((out / pki.IDENTITY_CERT_FILE).read_bytes())
    assert pki.verify_certificate(cert, pki.certs_from_pem((out / "ca.pem").read_bytes())).name == "alice"
    assert pki.signer_of(key).public_bytes == pki.verifier_of(cert).public_bytes
    result = runner.invoke(identity_app, ["show", "--dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "alice" in result.output and "Conf CA" in result.output
    assert pki.fingerprint(cert) in result.output and "valid" in result.output


def test_cli_errors_are_one_sentence(tmp_path, monkeypatch):
    runner = CliRunner()
    ca_dir = tmp_path / "ca"
    monkeypatch.setenv("SECCHAT_PASSPHRASE", "right passphrase")
    monkeypatch.delenv("SECCHAT_CA_PASSPHRASE", raising=False)
    assert runner.invoke(ca_app, ["init", "--dir", str(ca_dir)]).exit_code == 0
    monkeypatch.setenv("SECCHAT_CA_PASSPHRASE", "wrong passphrase")
    result = runner.invoke(ca_app, ["issue", "bob", "--dir", str(ca_dir), "--out", str(tmp_path / "bob")])
    assert result.exit_code == ExitCode.PASSPHRASE
    assert "wrong passphrase for the CA key in" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(identity_app, ["show", "--dir", str(tmp_path / "nobody")])
    assert result.exit_code == ExitCode.SETUP and "no certificate" in result.output
    result = runner.invoke(ca_app, ["init", "--dir", str(ca_dir)])
    assert result.exit_code == ExitCode.EXISTS and "already exists" in result.output


def test_load_identity(tmp_path, ca):
    ca_key, ca_cert = ca
    key = pki.generate_key()
    cert = pki.issue_certificate(ca_key, ca_cert, "dora", key.public_key())
    d = tmp_path / "dora"
    pki.save_private_key(d / pki.IDENTITY_KEY_FILE, key, "dora's passphrase")
    (d / pki.IDENTITY_CERT_FILE).write_bytes(pki.cert_to_pem(cert))
    (d / pki.CA_CERT_FILE).write_bytes(pki.cert_to_pem(ca_cert))
    local = pki.load_identity(d, "dora's passphrase")
    assert local.identity == pki.Identity("dora", "Test CA") and local.trusted == (ca_cert,)
    pki.save_private_key(d / pki.IDENTITY_KEY_FILE, pki.generate_key(), "dora's passphrase")
    with pytest.raises(pki.PkiError) as err:
        pki.load_identity(d, "dora's passphrase")
    assert err.value.code == "key_mismatch"
    with pytest.raises(pki.PkiError) as err:
        pki.load_identity(tmp_path / "nobody", "pw")
    assert err.value.code == "no_identity"


def test_cli_ca_init_force_moves_the_old_ca_aside(tmp_path, monkeypatch):
    monkeypatch.setenv("SECCHAT_CA_PASSPHRASE", "the CA's passphrase")
    runner = CliRunner()
    ca_dir = tmp_path / "ca"
    assert runner.invoke(ca_app, ["init", "--dir", str(ca_dir)]).exit_code == 0
    old = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    result = runner.invoke(ca_app, ["init", "--dir", str(ca_dir), "--force"])
    assert result.exit_code == 0, result.output
    (aside,) = ca_dir.glob("replaced-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == old  # nothing deleted
    assert (ca_dir / pki.CA_KEY_FILE).read_bytes() != old[pki.CA_KEY_FILE]
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
