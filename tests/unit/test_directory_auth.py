"""The request-signing scheme: every signed field matters, headers are parsed strictly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secchat.crypto import Signer
from secchat.directory.auth import (
    MAX_SKEW,
    AuthError,
    check_request,
    parse_auth_headers,
    request_message,
    sign_request,
)

SIGNER = Signer(bytes(range(32)))
BASE = ("POST", "/v1/conferences", 1_000_000, "ab" * 16, b'{"id": "x"}')


def _auth(method="POST", path="/v1/conferences", ts=1_000_000, nonce="ab" * 16, body=b'{"id": "x"}'):
    return parse_auth_headers(sign_request(SIGNER, "alice", method, path, body, timestamp=ts, nonce=nonce))


def test_round_trip():
    auth = _auth()
    assert auth.name == "alice" and auth.timestamp == 1_000_000
    check_request(SIGNER.verifier(), auth, "POST", "/v1/conferences", b'{"id": "x"}', now=1_000_000)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("DELETE", "/v1/conferences", b'{"id": "x"}'), ("POST", "/v1/conferences?x=1", b'{"id": "x"}'),
     ("POST", "/v1/conferences", b'{"id": "y"}')],
)
def test_each_field_is_covered(method, path, body):
    with pytest.raises(AuthError) as err:
        check_request(SIGNER.verifier(), _auth(), method, path, body, now=1_000_000)
    assert err.value.code == "bad_request_signature"


@settings(deadline=None, max_examples=50)
@given(st.sampled_from(range(5)), st.binary(min_size=1, max_size=8))
def test_message_changes_with_any_field(index, extra):
    fields = list(BASE)
    value = fields[index]
    fields[index] = value + 1 if isinstance(value, int) else value + (extra if isinstance(value, bytes) else extra.hex())
    assert request_message(*fields) != request_message(*BASE)


def test_stale_both_ways():
    for now in (1_000_000 + MAX_SKEW + 1, 1_000_000 - MAX_SKEW - 1):
        with pytest.raises(AuthError) as err:
            check_request(SIGNER.verifier(), _auth(), *BASE[:2], BASE[4], now=now)
        assert err.value.code == "stale_request"


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-secchat-name": "a", "x-secchat-timestamp": "1", "x-secchat-nonce": "zz", "x-secchat-signature": "00" * 64},
     {"x-secchat-name": "a", "x-secchat-timestamp": "-1", "x-secchat-nonce": "ab" * 16, "x-secchat-signature": "00" * 64},
     {"x-secchat-name": "a", "x-secchat-timestamp": "1", "x-secchat-nonce": "ab" * 16, "x-secchat-signature": "00"}],
)
def test_malformed_headers(headers):
    with pytest.raises(AuthError) as err:
        parse_auth_headers(headers)
    assert err.value.code in ("missing_signature", "bad_request_signature")
