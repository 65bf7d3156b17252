"""The directory over HTTPS: a real ``secchat directory serve --tls-cert/--tls-key`` process and
clients that verify it -- the profile's ``directory_ca`` bundle (``init --directory-ca``), the
system's trust store by default -- and refuse, with exit code 7, a certificate that does not
verify (unknown CA, another host's name).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from secchat.app.exit_codes import ExitCode
from secchat.directory.client import DirectoryClient, UntrustedResponse
from secchat.directory.trust import TrustStore
from tests.directory_support import ServerProcess, World, make_tls_files
from tests.integration.test_app_cli import _env, _error, secchat


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    secchat("ca", "init", "--dir", str(root / "ca"))
    tls = make_tls_files(root / "tls", ("127.0.0.1",))
    server = ServerProcess(root / "ca" / "ca.pem", f"sqlite:///{root / 'directory.sqlite3'}", tls=tls).start()
    try:
        yield root, tls, server
    finally:
        server.close()


def test_profiles_use_an_https_directory_verified_by_their_bundle(tls_world):
    root, tls, server = tls_world
    assert server.url.startswith("https://")
    home = root / "alice"
    secchat("init", "alice", "--ca-dir", str(root / "ca"), "--directory", server.url,
            "--directory-ca", str(tls.ca), "--home", str(home))
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["directory"] == server.url and config["directory_ca"] == str(tls.ca.resolve())
    assert "registered alice@" in secchat("register", "--home", str(home)).stdout
    assert "alice@" in secchat("participants", "--home", str(home)).stdout
    secchat("conferences", "--home", str(home))  # the ChatApp's client verifies it too


def test_a_directory_certificate_that_does_not_verify_is_refused_with_exit_7(tls_world):
    root, tls, server = tls_world
    other = make_tls_files(root / "other-tls", ("127.0.0.1",), ca_name="Some Other CA")
    wrong = root / "wrong-ca"
    secchat("init", "mallory", "--ca-dir", str(root / "ca"), "--directory", server.url,
            "--directory-ca", str(other.ca), "--home", str(wrong))
    for command in ("register", "participants", "conferences"):
        err = _error(secchat(command, "--home", str(wrong), check=False), ExitCode.UNTRUSTED)
        assert f"the TLS certificate of the directory at {server.url} failed verification" in err, err
        assert "unable to get local issuer certificate" in err, err

    # no bundle: the system's trust store, which does not know the directory's private CA
    system = root / "system-trust"
    secchat("init", "sam", "--ca-dir", str(root / "ca"), "--directory", server.url, "--home", str(system))
    err = _error(secchat("register", "--home", str(system), check=False), ExitCode.UNTRUSTED)
    assert "failed verification" in err

    # the right CA, the wrong name: the certificate is for 127.0.0.1, not for localhost
    by_name = root / "by-name"
    url = server.url.replace("127.0.0.1", "localhost")
    secchat("init", "nina", "--ca-dir", str(root / "ca"), "--directory", url,
            "--directory-ca", str(tls.ca), "--home", str(by_name))
    err = _error(secchat("register", "--home", str(by_name), check=False), ExitCode.UNTRUSTED)
    assert "failed verification" in err and "Hostname mismatch" in err, err


def test_bad_tls_settings_are_one_sentence_and_change_nothing(tls_world):
    root, tls, server = tls_world
    # a bundle for a plain http:// directory is a mistake, said before anything is written
    home = root / "plain"
    err = _error(secchat("init", "pat", "--ca-dir", str(root / "ca"), "--directory", "http://127.0.0.1:1",
                         "--directory-ca", str(tls.ca), "--home", str(home), check=False), ExitCode.USAGE)
    assert "only with an https:// directory" in err and not home.exists()
    err = _error(secchat("init", "pat", "--ca-dir", str(root / "ca"), "--directory", server.url,
                         "--directory-ca", str(root / "missing.pem"), "--home", str(home), check=False),
                 ExitCode.SETUP)
    assert "cannot read the directory's CA bundle" in err and not home.exists()

    serve = [sys.executable, "-m", "secchat.directory", "serve", "--ca", str(root / "ca" / "ca.pem"),
             "--db", f"sqlite:///{root / 'never.sqlite3'}", "--port", "0", "--name", "https://x"]
    env = _env()
    half = subprocess.run([*serve, "--tls-cert", str(tls.cert)], env=env, capture_output=True, text=True, timeout=60)
    assert "give both --tls-cert and --tls-key" in _error(half, ExitCode.USAGE)
    other = make_tls_files(root / "mismatch", ("127.0.0.1",))
    mismatch = subprocess.run([*serve, "--tls-cert", str(tls.cert), "--tls-key", str(other.key)],
                              env=env, capture_output=True, text=True, timeout=60)
    assert "cannot use --tls-cert" in _error(mismatch, ExitCode.SETUP)
    assert not (root / "never.sqlite3").exists()


def test_the_client_api_verifies_the_directory_certificate(tls_world):
    root, tls, server = tls_world
    wrong = make_tls_files(root / "api-wrong", ("127.0.0.1",), ca_name="Wrong CA")
    world = World()  # any identity will do: TLS fails before any request is answered
    u = world.user("x")
    client = DirectoryClient(server.url, [world.ca_cert], u.key, u.cert, TrustStore(None), tls_ca=wrong.ca)
    with client, pytest.raises(UntrustedResponse) as caught:
        client.list_participants()
    assert caught.value.code == "untrusted_directory"
    with DirectoryClient(server.url, [world.ca_cert], u.key, u.cert, TrustStore(None), tls_ca=tls.ca) as client:
        assert isinstance(client.list_participants(), list)  # verified: the listing answers
