"""Member configuration: valid files load, invalid ones fail with one clear sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from secchat.net.config import ConfigError, load_config, parse_address, parse_config


def base() -> dict:
    return {
        "identity": {"name": "m0", "key": "m0.key", "cert": "m0.pem", "ca": "ca.pem", "passphrase_env": "P"},
        "listen": {"address": "127.0.0.1:0"},
        "peers": {"m1": "127.0.0.1:4001"},
        "conference": [{"id": "c", "members": [{"name": "m0", "cert": "m0.pem"}, {"name": "m1", "cert": "/x/m1.pem"}]}],
        "links": {"retry_initial": 0.1},
    }


def test_valid_config(tmp_path):
    cfg = parse_config(base(), base=tmp_path)
    assert cfg.identity.key == tmp_path / "m0.key"
    assert cfg.conferences[0].members[1][1] == Path("/x/m1.pem")
    assert cfg.conferences[0].mode == "signed" and cfg.conferences[0].join == "start"
    assert cfg.peers == {"m1": ("127.0.0.1", 4001)}
    assert cfg.links.retry_initial == 0.1


def test_load_config_file(tmp_path):
    import tomli_w

    path = tmp_path / "m0.toml"
    path.write_text(tomli_w.dumps(base()))
    assert load_config(path).identity.name == "m0"
    path.write_text("[identity\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("identity"), "missing \\[identity\\]"),
        (lambda c: c["identity"].pop("passphrase_env"), "exactly one"),
        (lambda c: c["identity"].update(passphrase_file="p"), "exactly one"),
        (lambda c: c["listen"].update(fd=3), "not both"),
        (lambda c: c["listen"].update(address="nohost"), "HOST:PORT"),
        (lambda c: c["peers"].update(m2="h:99999"), "out of range"),
        (lambda c: c.update(conference=[]), "at least one"),
        (lambda c: c["conference"][0].update(mode="fast"), "mode"),
        (lambda c: c["conference"][0].update(join="later"), "join"),
        (lambda c: c["conference"][0]["members"].pop(), "at least two"),
        (lambda c: c["conference"][0]["members"].append({"name": "m1", "cert": "y"}), "distinct"),
        (lambda c: c["conference"][0]["members"][0].update(name="zz"), "not a member"),
        (lambda c: c["conference"][0].update(id="x" * 200), "longer"),
        (lambda c: c["links"].update(bogus=1), "unknown settings"),
        (lambda c: c["links"].update(retry_initial=-1), "\\[links\\]"),
    ],
)
def test_invalid_configs(mutate, message):
    cfg = base()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)


def test_passphrase_sources(tmp_path, monkeypatch):
    cfg = parse_config(base(), base=tmp_path)
    monkeypatch.delenv("P", raising=False)
    with pytest.raises(ConfigError, match="not set"):
        cfg.identity.passphrase()
    monkeypatch.setenv("P", "secret words")
    assert cfg.identity.passphrase() == "secret words"
    data = base()
    del data["identity"]["passphrase_env"]
    data["identity"]["passphrase_file"] = "pass.txt"
    cfg = parse_config(data, base=tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.identity.passphrase()
    (tmp_path / "pass.txt").write_text("pw\n")
    assert cfg.identity.passphrase() == "pw"


def test_parse_address_ipv6():
    assert parse_address("[::1]:80", "x") == ("::1", 80)


def test_relay_table():
    cfg = parse_config(base() | {"relay": {"url": "nats://10.0.0.1:4222", "only": True}})
    assert cfg.relay.servers == ("nats://10.0.0.1:4222",) and cfg.relay.only
    assert not parse_config(base()).relay.enabled
    for table, message in (
        ({"url": "http://x"}, "nats://"),
        ({"url": "nats://a", "servers": ["nats://b"]}, "not both"),
        ({"servers": "nats://a"}, "list of nats:// URLs"),
        ({"url": "nats://a", "bogus": 1}, "unknown settings"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(base() | {"relay": table})
