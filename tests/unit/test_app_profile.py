"""Profiles (config.toml, identity from a local CA) and the command line's time parsing."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
import typer

from secchat import pki
from secchat.app.cli_chat import parse_time
from secchat.app.profile import (
    ProfileError,
    Settings,
    create_profile,
    init_profile,
    install_certificate,
    load_settings,
    save_settings,
)
from tests.app_support import CA_PASSPHRASE, make_ca

PW = "alice's passphrase"


def test_init_writes_identity_and_config(tmp_path):
    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    home = tmp_path / "alice"
    fp = init_profile(home, "alice", PW, "http://127.0.0.1:9", ca, CA_PASSPHRASE)
    local = pki.load_identity(home / "identity", PW)
    assert local.identity.name == "alice" and pki.fingerprint(local.cert) == fp
    assert load_settings(home) == Settings("alice", "http://127.0.0.1:9")
    for folder in (home, home / "identity"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for f in folder.iterdir():
            assert f.is_dir() or stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    os.chmod(home, 0o755)  # a profile made by an older SecChat is tightened when opened
    load_settings(home)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    with pytest.raises(ProfileError, match="at least 8 characters") as err:
        init_profile(tmp_path / "e", "eve", "short", "http://127.0.0.1:9", ca, CA_PASSPHRASE)
    assert err.value.code == "weak_passphrase" and not (tmp_path / "e").exists()
    with pytest.raises(ProfileError, match="already exists"):
        init_profile(home, "alice", PW, "http://127.0.0.1:9", ca, CA_PASSPHRASE)
    with pytest.raises(ProfileError, match="wrong passphrase for the CA"):
        init_profile(tmp_path / "b", "bob", PW, "http://127.0.0.1:9", ca, "nope")
    with pytest.raises(ProfileError, match="there is no CA"):
        init_profile(tmp_path / "c", "cy", PW, "http://127.0.0.1:9", tmp_path / "none", CA_PASSPHRASE)
    with pytest.raises(ProfileError, match="must start with http"):
        init_profile(tmp_path / "d", "dee", PW, "ftp://x", ca, CA_PASSPHRASE)


def test_settings_errors_are_sentences(tmp_path):
    with pytest.raises(ProfileError, match="run `secchat init` first"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text('name = "a"\ndirectory = "http://x"\nbogus = 1\n')
    with pytest.raises(ProfileError, match="is invalid"):
        load_settings(tmp_path)
    save_settings(tmp_path, Settings("a", "http://x", listen_port=7001, advertise_host="10.0.0.1"))
    s = load_settings(tmp_path)
    assert s.listen_port == 7001 and s.advertised == "10.0.0.1"


def test_parse_time():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_time("now", now) == now
    assert parse_time("+30m", now) == now + timedelta(minutes=30)
    assert parse_time("+2h", now) == now + timedelta(hours=2)
    assert parse_time("+1d", now) == now + timedelta(days=1)
    assert parse_time("2026-02-01T10:00", now) == datetime(2026, 2, 1, 10, 0, tzinfo=UTC)
    assert parse_time("2026-02-01T10:00+01:00", now).utcoffset() == timedelta(hours=1)
    assert parse_time("+1h30m", now) == now + timedelta(hours=1, minutes=30)
    assert parse_time("+1d2h3m4s", now) == now + timedelta(days=1, hours=2, minutes=3, seconds=4)
    local = now.astimezone()
    tomorrow = parse_time("tomorrow 09:00", now)
    assert tomorrow.astimezone().date() == local.date() + timedelta(days=1)
    assert (tomorrow.astimezone().hour, tomorrow.astimezone().minute) == (9, 0)
    assert parse_time("Tomorrow 9:05", now).astimezone().minute == 5
    assert parse_time("today 17:30", now).astimezone().date() == local.date()
    assert parse_time("tomorrow", now).astimezone().hour == 0
    for bad in ("tomorrow-ish", "+1h30", "+h", "tomorrow 25:00", "today 10:61", "+1y"):
        with pytest.raises(typer.Exit) as info:
            parse_time(bad, now)
        assert info.value.exit_code == 2, bad


def test_request_then_install_and_what_install_refuses(tmp_path):
    ca_key, ca_cert = pki.create_ca("Other CA")
    home = tmp_path / "bea"
    request = create_profile(home, "bea", PW, "http://127.0.0.1:9")
    assert (home / "identity" / "request.pem").read_bytes() == pki.request_to_pem(request)
    key_store = (home / "identity" / "identity.key").read_bytes()
    with pytest.raises(pki.PkiError, match="not installed yet"):
        pki.load_identity(home / "identity", PW)
    with pytest.raises(ProfileError, match="already exists"):
        create_profile(home, "bea", PW, "http://127.0.0.1:9")

    other = pki.generate_key()  # a certificate for another key, or another name, is refused
    for cert, what in (
        (pki.issue_certificate(ca_key, ca_cert, "bea", other.public_key()), "not for the key"),
        (pki.sign_request(ca_key, ca_cert, pki.make_request(other, "bob")), "not for the key"),
    ):
        with pytest.raises(ProfileError, match=what):
            install_certificate(home, [cert, ca_cert])
    stranger_key, stranger_ca = pki.create_ca("Stranger CA")
    with pytest.raises(ProfileError) as err:  # signed by a CA other than the one given
        install_certificate(home, [pki.sign_request(stranger_key, stranger_ca, request)], [ca_cert])
    assert err.value.code in ("unknown_ca", "bad_signature")
    assert not (home / "identity" / "identity.pem").exists()

    cert = install_certificate(home, [pki.sign_request(ca_key, ca_cert, request), ca_cert])
    local = pki.load_identity(home / "identity", PW)
    assert local.cert == cert and local.trusted == (ca_cert,)
    assert (home / "identity" / "identity.key").read_bytes() == key_store  # the key never moved


def test_replace_sets_the_old_profile_aside(tmp_path):
    home = tmp_path / "cid"
    create_profile(home, "cid", PW, "http://127.0.0.1:9")
    (home / "history.sqlite3").write_bytes(b"old history")
    old_key = (home / "identity" / "identity.key").read_bytes()
    create_profile(home, "cid", PW, "http://127.0.0.1:9", replace=True)
    (aside,) = home.glob("replaced-*")
    assert (aside / "identity" / "identity.key").read_bytes() == old_key
    assert (aside / "history.sqlite3").read_bytes() == b"old history"
    assert (home / "identity" / "identity.key").read_bytes() != old_key
    assert stat.S_IMODE(os.stat(aside).st_mode) == 0o700


def test_renewal_keeps_the_key(tmp_path):
    from secchat.app.profile import renewal_request

    ca_key, ca_cert = pki.create_ca("Renewing CA")
    home = tmp_path / "dan"
    request = create_profile(home, "dan", PW, "http://127.0.0.1:9")
    first = install_certificate(home, [pki.sign_request(ca_key, ca_cert, request, valid_days=30), ca_cert])
    again = renewal_request(home, PW)
    assert again.public_key().public_bytes_raw() == request.public_key().public_bytes_raw()
    second = install_certificate(home, [pki.sign_request(ca_key, ca_cert, again, valid_days=365), ca_cert])
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert pki.load_identity(home / "identity", PW).cert == second
    with pytest.raises(ProfileError) as err:
        renewal_request(home, "not dan's passphrase")
    assert err.value.code == "wrong_passphrase"


def test_a_profile_can_name_a_relay(tmp_path):
    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    home = tmp_path / "alice"
    init_profile(home, "alice", PW, "http://127.0.0.1:9", ca, CA_PASSPHRASE,
                 relay="nats://10.0.0.1:4222, nats://10.0.0.2:4222", relay_only=True)
    relay = load_settings(home).relay_config()
    assert relay is not None and relay.only
    assert relay.servers == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222")
    assert Settings("a", "http://x").relay_config() is None
    with pytest.raises(ProfileError, match="nats://") as err:
        init_profile(tmp_path / "b", "bob", PW, "http://127.0.0.1:9", ca, CA_PASSPHRASE,
                     relay="http://relay")
    assert err.value.code == "bad_config" and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="relay_only needs a relay URL"):
        Settings("a", "http://x", relay_only=True)


def test_a_run_can_name_another_relay(tmp_path):
    import asyncio

    from secchat.app.session import AppError, ChatApp

    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    home = tmp_path / "alice"
    init_profile(home, "alice", PW, "http://127.0.0.1:9", ca, CA_PASSPHRASE)

    async def main():
        async with await ChatApp.open(home, PW, relay="nats://10.0.0.9:4222", relay_only=True) as app:
            relay = app.settings.relay_config()
            assert relay is not None and relay.only and relay.servers == ("nats://10.0.0.9:4222",)
        with pytest.raises(AppError, match="bad relay") as err:
            await ChatApp.open(home, PW, relay="http://relay")
        assert err.value.code == "bad_config"
        assert load_settings(home).relay == ""  # the profile is unchanged

    asyncio.run(main())
