"""Pins and the translation of foreign exceptions at the network boundary."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from secchat.net.errors import (
    AuthenticationError,
    ConnectError,
    LinkClosed,
    LinkError,
    LinkTimeout,
    map_exceptions,
)
from secchat.net.provision import make_identities
from secchat.net.tls import (
    PinSet,
    TlsCredentials,
    client_context,
    describe_certificate,
    server_context,
)


@pytest.fixture(scope="module")
def pki():
    return make_identities(["alice", "bob", "carol"])


def test_pins_identify_and_check(pki):
    _, (alice, bob, carol) = pki
    pins = PinSet({"alice": alice.der, "bob": bob.der})
    assert pins.identify(bob.der) == "bob"
    pins.check("bob", bob.der)
    with pytest.raises(AuthenticationError) as info:
        pins.check("bob", alice.der)  # a valid certificate, for someone else
    assert info.value.code == "pin_mismatch"
    assert "alice" in str(info.value)
    with pytest.raises(AuthenticationError) as info:
        pins.identify(carol.der)  # valid under the CA but not a member
    assert info.value.code == "not_pinned"
    with pytest.raises(AuthenticationError):
        pins.identify(None)


def test_pins_refuse_contradictions(pki):
    _, (alice, bob, _) = pki
    pins = PinSet({"alice": alice.der})
    with pytest.raises(ValueError):
        pins.add("alice", bob.der)
    with pytest.raises(ValueError):
        pins.add("mallory", alice.der)
    pins.add("alice", alice.der)  # idempotent


def test_describe_certificate_is_printable(pki):
    _, (alice, _, _) = pki
    assert describe_certificate(alice.der) == "CN='alice' issuer='SecChat test CA'"
    assert describe_certificate(b"junk") == "unparsable certificate"
    assert describe_certificate(None) == "no certificate"


def test_contexts_are_tls13_mutual(pki):
    ca, (alice, _, _) = pki
    creds = TlsCredentials(alice.key, alice.cert, (ca,))
    for ctx in (server_context(creds), client_context(creds)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
    assert "key" not in repr(creds).split("cert=")[0].replace("TlsCredentials(", "")


def test_credentials_need_a_ca(pki):
    _, (alice, _, _) = pki
    with pytest.raises(ValueError):
        TlsCredentials(alice.key, alice.cert, ())


@pytest.mark.parametrize(
    ("exc", "connecting", "expected"),
    [
        (ConnectionRefusedError(111, "refused"), True, ConnectError),
        (ConnectionResetError(104, "reset"), False, LinkClosed),
        (BrokenPipeError(32, "pipe"), False, LinkClosed),
        (OSError(113, "unreachable"), True, ConnectError),
        (asyncio.IncompleteReadError(b"ab", 10), False, LinkClosed),
        (TimeoutError(), False, LinkTimeout),
        (ssl.SSLError(1, "alert"), True, AuthenticationError),
        (ssl.SSLError(1, "bad record"), False, LinkClosed),
    ],
)
def test_map_exceptions(exc, connecting, expected):
    with pytest.raises(expected) as info, map_exceptions(connecting=connecting):
        raise exc
    assert isinstance(info.value, LinkError)
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, OSError | ssl.SSLError)


def test_map_exceptions_leaves_link_errors_and_others_alone():
    with pytest.raises(LinkClosed), map_exceptions():
        raise LinkClosed("x")
    with pytest.raises(KeyError), map_exceptions():
        raise KeyError("not ours to translate")
