"""The request-signing scheme: every signed field matters, headers are parsed strictly."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secchat.crypto import Signer
from secchat.directory.auth import (
    MAX_SKEW,
    AuthError,
    authority_of,
    check_request,
    parse_auth_headers,
    request_message,
    sign_request,
)

SIGNER = Signer(bytes(range(32)))
DIRECTORY = "https://dir-a.example:443"
NAMES = (DIRECTORY,)
BASE = (DIRECTORY, "POST", "/v1/conferences", 1_000_000, "ab" * 16, b'{"id": "x"}')


def _auth(method="POST", path="/v1/conferences", ts=1_000_000, nonce="ab" * 16, body=b'{"id": "x"}',
          directory=DIRECTORY):
    return parse_auth_headers(
        sign_request(SIGNER, "alice", directory, method, path, body, timestamp=ts, nonce=nonce)
    )


def test_round_trip():
    auth = _auth()
    assert auth.name == "alice" and auth.timestamp == 1_000_000 and auth.authority == DIRECTORY
    check_request(SIGNER.verifier(), auth, NAMES, "POST", "/v1/conferences", b'{"id": "x"}', now=1_000_000)


def test_a_request_for_another_directory_is_refused():
    # captured at directory B, replayed at A: its own code, whatever header the replayer sends
    other = _auth(directory="https://dir-b.example:443")
    with pytest.raises(AuthError) as err:
        check_request(SIGNER.verifier(), other, NAMES, "POST", "/v1/conferences", b'{"id": "x"}', now=1_000_000)
    assert err.value.code == "wrong_directory"
    relabelled = dataclasses.replace(other, authority=DIRECTORY)
    with pytest.raises(AuthError) as err:
        check_request(SIGNER.verifier(), relabelled, NAMES, "POST", "/v1/conferences", b'{"id": "x"}',
                      now=1_000_000)
    assert err.value.code == "bad_request_signature"


@pytest.mark.parametrize(
    ("url", "authority"),
    [("http://127.0.0.1:8700", "http://127.0.0.1:8700"), ("HTTP://Dir.Example/v1/", "http://dir.example:80"),
     ("https://dir.example", "https://dir.example:443"), ("http://[::1]:9/x", "http://[::1]:9"),
     ("dir-a", "dir-a")],
)
def test_authority_is_normalized(url, authority):
    assert authority_of(url) == authority


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://x:99999", " "])
def test_bad_directory_urls(url):
    with pytest.raises(ValueError):
        authority_of(url)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("DELETE", "/v1/conferences", b'{"id": "x"}'), ("POST", "/v1/conferences?x=1", b'{"id": "x"}'),
     ("POST", "/v1/conferences", b'{"id": "y"}')],
)
def test_each_field_is_covered(method, path, body):
    with pytest.raises(AuthError) as err:
        check_request(SIGNER.verifier(), _auth(), NAMES, method, path, body, now=1_000_000)
    assert err.value.code == "bad_request_signature"


@settings(deadline=None, max_examples=50)
@given(st.sampled_from(range(6)), st.binary(min_size=1, max_size=8))
def test_message_changes_with_any_field(index, extra):
    fields = list(BASE)
    value = fields[index]
    fields[index] = value + 1 if isinstance(value, int) else value + (extra if isinstance(value, bytes) else extra.hex())
    assert request_message(*fields) != request_message(*BASE)


def test_stale_both_ways():
    for now in (1_000_000 + MAX_SKEW + 1, 1_000_000 - MAX_SKEW - 1):
        with pytest.raises(AuthError) as err:
            check_request(SIGNER.verifier(), _auth(), NAMES, *BASE[1:3], BASE[5], now=now)
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
