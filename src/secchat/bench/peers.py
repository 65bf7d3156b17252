"""Peer systems measured in the same run as SecChat (the optional extra ``secchat[peers]``).

* Megolm, Matrix's group ratchet, through ``vodozemac`` (Rust): per message an AES-256-CBC +
  HMAC-SHA-256 ratchet step and an Ed25519 signature by the sender's group session.
* MLS (RFC 9420) through ``agentvault-mls-rs-uniffi``, a UniFFI binding of AWS's mls-rs (Rust):
  per message the application-message encryption of the group's current epoch; group set-up is
  one commit adding everybody, and each new member processing its Welcome with the tree.

Each is skipped with one line when its package is not installed.
"""

from __future__ import annotations

import importlib.util
import time

from .modes import MessageMode, Receive, Send, register

__all__ = ["INSTALL", "available", "mls_setup_cpu"]

INSTALL = "pip install 'secchat[peers]'"
_PACKAGES = {"megolm": ("vodozemac", "vodozemac"), "mls": ("mls_rs_uniffi", "agentvault-mls-rs-uniffi")}


def available(peer: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[peer][0]) is not None


def _missing(peer: str):
    def missing() -> str | None:
        dist = _PACKAGES[peer][1]
        return None if available(peer) else f"{peer}: {dist} is not installed ({INSTALL} adds it)"

    return missing


def _megolm(payload: bytes) -> tuple[Send, Receive]:
    import vodozemac

    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)
    parse = vodozemac.MegolmMessage.from_bytes

    def send() -> bytes:
        return outbound.encrypt(payload).to_bytes()

    def receive(frame: bytes) -> None:
        inbound.decrypt(parse(frame))

    return send, receive


def _mls_clients(n: int):
    from mls_rs_uniffi import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        CipherSuite,
        Client,
        client_config_default,
        generate_signature_keypair,
    )

    config = client_config_default()
    return [Client(f"m{i}".encode(), generate_signature_keypair(CipherSuite.CURVE25519_AES128), config) for i in range(n)]


def _mls_group(clients) -> list:
    """Every member's group, from key packages to processed Welcomes (what set-up costs)."""
    creator = clients[0].create_group(b"secchat-bench")
    if len(clients) == 1:
        return [creator]
    out = creator.add_members([c.generate_key_package_message() for c in clients[1:]])
    creator.process_incoming_message(out.commit_message)  # apply our own commit
    return [creator] + [c.join_group(out.ratchet_tree, out.welcome_message).group for c in clients[1:]]


def mls_setup_cpu(n: int) -> float:
    """Seconds of compute, all members together (one thread), until all n hold the group's
    secret; long-term signature keys exist beforehand, as SecChat's certificates do."""
    clients = _mls_clients(n)
    t0 = time.perf_counter()
    groups = _mls_group(clients)
    elapsed = time.perf_counter() - t0
    secrets = {g.export_secret(b"secchat-bench", b"", 32) for g in groups}
    if len(secrets) != 1:
        raise RuntimeError("MLS members disagree on the group secret")
    return elapsed


def _mls(payload: bytes) -> tuple[Send, Receive]:
    from mls_rs_uniffi import Message  # type: ignore[import-untyped,import-not-found,unused-ignore]

    sender, receiver = _mls_group(_mls_clients(2))

    def send() -> bytes:
        return sender.encrypt_application_message(payload).to_bytes()

    def receive(frame: bytes) -> None:
        receiver.process_incoming_message(Message.from_bytes(frame))

    return send, receive


register(MessageMode("megolm", "Megolm (vodozemac)", _megolm, family="peer", missing=_missing("megolm")))
register(MessageMode("mls", "MLS (mls-rs)", _mls, family="peer", missing=_missing("mls")))
