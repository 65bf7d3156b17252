"""The TOML configuration of one member process.

Example (every path may be relative to the file)::

    [identity]
    name = "m0"
    key = "m0.key"                    # passphrase-encrypted PKCS#8 (secchat.pki)
    cert = "m0.pem"
    passphrase_env = "SECCHAT_PASSPHRASE"   # or: passphrase_file = "pass.txt"
    ca = "ca.pem"                     # the conference CA(s) we trust

    [listen]
    address = "127.0.0.1:0"           # or: fd = 5  (a listening socket inherited from a launcher)

    [peers]                           # addresses we know; one side of each pair is enough
    m1 = "127.0.0.1:40001"

    [[conference]]
    id = "conf-1"
    mode = "signed"                   # or "burst", "pairwise", "group" (docs/protocols.md)
    join = "start"                    # or "command": wait for {"cmd": "join"} on stdin
    members = [{name = "m0", cert = "m0.pem"}, {name = "m1", cert = "m1.pem"}]

    [relay]                           # optional: reach peers through an untrusted NATS relay
    url = "nats://relay.example:4222" # or: servers = ["nats://a:4222", "nats://b:4222"]
    only = false                      # true: never try direct links
                                      # any other field of secchat.net.relay.RelayConfig

    [links]                           # optional: any field of secchat.net.links.LinkConfig
    retry_initial = 0.05

    [stack]                           # optional: fields of secchat.protocols.stack.StackConfig

    [state]                           # optional; default: "<this file's name>.state" beside it
    dir = "m0.state"                  # the write-ahead key-exchange state: keep it across restarts

Loading validates everything and raises :class:`ConfigError` with one clear sentence; it never
reads the passphrase into anything but the key loader.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocols.auth import MODES as AUTH_MODES
from .framing import MAX_GROUP_ID
from .links import LinkConfig
from .relay import RelayConfig

__all__ = ["ConferenceConfig", "ConfigError", "IdentityConfig", "MemberConfig", "load_config", "parse_address"]

MODES = AUTH_MODES  # signed, burst, pairwise, group
JOIN = ("start", "command")


class ConfigError(ValueError):
    """The member configuration is invalid (one sentence says what and where)."""


@dataclass(frozen=True)
class IdentityConfig:
    name: str
    key: Path
    cert: Path
    ca: Path
    passphrase_env: str | None = None
    passphrase_file: Path | None = None

    def passphrase(self) -> str:
        if self.passphrase_file is not None:
            try:
                return self.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read the passphrase file {self.passphrase_file}: {exc.strerror}") from None
        assert self.passphrase_env is not None
        value = os.environ.get(self.passphrase_env)
        if value is None:
            raise ConfigError(f"the environment variable {self.passphrase_env} (passphrase) is not set")
        return value


@dataclass(frozen=True)
class ConferenceConfig:
    id: str
    members: tuple[tuple[str, Path], ...]
    mode: str = "signed"
    join: str = "start"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.members)


@dataclass(frozen=True)
class MemberConfig:
    identity: IdentityConfig
    listen_address: tuple[str, int] | None
    listen_fd: int | None
    peers: dict[str, tuple[str, int]]
    conferences: tuple[ConferenceConfig, ...]
    links: LinkConfig = field(default_factory=LinkConfig)
    stack: dict[str, Any] = field(default_factory=dict)
    #: the write-ahead key-exchange state (:mod:`secchat.net.journal`): a restart from this
    #: config finds it here and never votes twice; default ``<config name>.state`` beside it
    state_dir: Path = Path("member.state")
    #: the relay, if any (:mod:`secchat.net.relay`)
    relay: RelayConfig = field(default_factory=RelayConfig)


def parse_address(text: str, where: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: an address is HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{where}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{where}: port {number} is out of range")
    return host.strip("[]"), number


def _table(data: dict, key: str, *, required: bool = True) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _str(table: dict, key: str, where: str, *, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: missing {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    return value


def load_config(path: str | os.PathLike[str]) -> MemberConfig:
    """Read and validate a member configuration file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, base=path.parent, stem=path.stem)


def parse_config(data: dict, *, base: Path = Path("."), stem: str | None = None) -> MemberConfig:
    def p(value: str) -> Path:
        q = Path(value)
        return q if q.is_absolute() else base / q

    ident = _table(data, "identity")
    name = _str(ident, "name", "[identity]")
    env = _str(ident, "passphrase_env", "[identity]", required=False)
    pfile = _str(ident, "passphrase_file", "[identity]", required=False)
    if (env is None) == (pfile is None):
        raise ConfigError("[identity]: give exactly one of 'passphrase_env' and 'passphrase_file'")
    identity = IdentityConfig(
        name=name,  # type: ignore[arg-type]
        key=p(_str(ident, "key", "[identity]")),  # type: ignore[arg-type]
        cert=p(_str(ident, "cert", "[identity]")),  # type: ignore[arg-type]
        ca=p(_str(ident, "ca", "[identity]")),  # type: ignore[arg-type]
        passphrase_env=env,
        passphrase_file=p(pfile) if pfile else None,
    )

    listen = _table(data, "listen", required=False)
    address = listen.get("address")
    fd = listen.get("fd")
    if address is not None and fd is not None:
        raise ConfigError("[listen]: give 'address' or 'fd', not both")
    if fd is not None and (not isinstance(fd, int) or isinstance(fd, bool) or fd < 0):
        raise ConfigError("[listen]: 'fd' must be a file descriptor number")
    listen_address = parse_address(address, "[listen] address") if address is not None else None
    if listen_address is None and fd is None:
        listen_address = ("127.0.0.1", 0)

    peers_table = _table(data, "peers", required=False)
    peers = {str(k): parse_address(v, f"[peers] {k}") for k, v in peers_table.items()}

    confs_raw = data.get("conference", [])
    if not isinstance(confs_raw, list) or not confs_raw:
        raise ConfigError("at least one [[conference]] is needed")
    conferences = []
    seen: set[str] = set()
    for i, c in enumerate(confs_raw):
        where = f"[[conference]] #{i + 1}"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} must be a table")
        cid = _str(c, "id", where)
        assert cid is not None
        if len(cid) > MAX_GROUP_ID:
            raise ConfigError(f"{where}: id longer than {MAX_GROUP_ID} characters")
        if cid in seen:
            raise ConfigError(f"{where}: conference {cid!r} is defined twice")
        seen.add(cid)
        mode = c.get("mode", "signed")
        if mode not in MODES:
            raise ConfigError(f"{where}: mode must be one of {MODES}, got {mode!r}")
        join = c.get("join", "start")
        if join not in JOIN:
            raise ConfigError(f"{where}: join must be one of {JOIN}, got {join!r}")
        members_raw = c.get("members")
        if not isinstance(members_raw, list) or len(members_raw) < 2:
            raise ConfigError(f"{where}: 'members' must list at least two members")
        members = []
        for j, m in enumerate(members_raw):
            if not isinstance(m, dict):
                raise ConfigError(f"{where}: member #{j + 1} must be a table {{name, cert}}")
            members.append((_str(m, "name", f"{where} member #{j + 1}"), p(_str(m, "cert", f"{where} member #{j + 1}"))))  # type: ignore[arg-type]
        names = [m[0] for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: member names must be distinct")
        if name not in names:
            raise ConfigError(f"{where}: we ({name}) are not a member")
        conferences.append(ConferenceConfig(cid, tuple(members), mode, join))  # type: ignore[arg-type]

    links_table = _table(data, "links", required=False)
    known = {f.name for f in dataclasses.fields(LinkConfig)}
    unknown = set(links_table) - known
    if unknown:
        raise ConfigError(f"[links]: unknown settings {sorted(unknown)}")
    try:
        links = LinkConfig(**links_table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[links]: {exc}") from None
    relay = parse_relay(_table(data, "relay", required=False))
    stack = _table(data, "stack", required=False)
    state = _table(data, "state", required=False)
    unknown = set(state) - {"dir"}
    if unknown:
        raise ConfigError(f"[state]: unknown settings {sorted(unknown)}")
    state_dir = _str(state, "dir", "[state]", required=False)
    return MemberConfig(
        identity, listen_address, fd, peers, tuple(conferences), links, dict(stack),
        p(state_dir) if state_dir else base / f"{stem or name}.state",
        relay,
    )


def parse_relay(table: dict[str, Any]) -> RelayConfig:
    """The ``[relay]`` table: ``url`` (or ``servers``), ``only``, any field of RelayConfig."""
    table = dict(table)
    url = table.pop("url", None)
    if url is not None:
        if "servers" in table:
            raise ConfigError("[relay]: give 'url' or 'servers', not both")
        table["servers"] = [url]
    servers = table.get("servers", [])
    if not isinstance(servers, list) or not all(isinstance(u, str) for u in servers):
        raise ConfigError("[relay]: 'servers' must be a list of nats:// URLs")
    table["servers"] = tuple(servers)
    known = {f.name for f in dataclasses.fields(RelayConfig)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[relay]: unknown settings {sorted(unknown)}")
    try:
        return RelayConfig(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[relay]: {exc}") from None
