"""Every Ed25519 engine of :mod:`secchat.crypto` accepts exactly the signatures libsodium accepts.

libsodium (``crypto_sign_open`` through PyNaCl, what SecChat used before it had engines) is the
oracle.  Its rules: S < L, R and A not of small order (a list of encodings, sign bit ignored), A
canonical and on the curve, the cofactorless equation compared on R's bytes.  The cases are the
ones where engines are known to differ: a small-order R that satisfies the equation, S + L, the
small-order and non-canonical keys, keys with a small-order component (mixed order, which
libsodium accepts), bit flips of valid signatures.  Crafted signatures need the secret scalar,
so a small pure-Python Ed25519 (RFC 8032, 5.1) is kept here.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as nacl
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.exceptions import ValueError as NaclValueError

from secchat.crypto import ENGINES, SMALL_ORDER_ENCODINGS, Signer, Verifier, sodium_accepts_key

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

# --------------------------------------------------------------------------- a slow Ed25519

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s: int, p: Point) -> Point:
    q: Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _x_of(y: int, sign: int) -> int | None:
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * SQRT_M1 % P
    if (x * x - xx) % P:
        return None
    if x == 0 and sign:
        return None
    return P - x if x & 1 != sign else x


def _point(y: int, sign: int = 0) -> Point:
    x = _x_of(y, sign)
    assert x is not None
    return (x, y, 1, x * y % P)


def _encode(p: Point) -> bytes:
    zi = pow(p[2], P - 2, P)
    x, y = p[0] * zi % P, p[1] * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


BASE = _point(4 * pow(5, P - 2, P) % P)


def _h(r: bytes, a: bytes, m: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + m).digest(), "little") % L


def _sign(a: int, key: bytes, m: bytes, r: int, *, r_bytes: bytes | None = None) -> bytes:
    """A signature of ``m`` with secret scalar ``a`` under public encoding ``key`` and nonce
    ``r`` (or the R encoding ``r_bytes`` and S = r + h a, whatever point R is)."""
    rb = r_bytes if r_bytes is not None else _encode(_mul(r, BASE))
    return rb + ((r + _h(rb, key, m) * a) % L).to_bytes(32, "little")


def _torsion() -> list[Point]:
    """The 8 points of small order."""
    t8 = _point(2707385501144840649318225287225658788936804267575313519463743609750303402022)
    return [_mul(k, t8) for k in range(8)]


# --------------------------------------------------------------------------- the comparison


def sodium(key: bytes, m: bytes, sig: bytes) -> bool:
    try:
        nacl.crypto_sign_open(sig + m, key)
    except (BadSignatureError, NaclValueError):
        return False
    return True


def assert_parity(key: bytes, m: bytes, sig: bytes) -> bool:
    """Every engine decides as libsodium does; returns libsodium's answer."""
    expected = sodium(key, m, sig)
    for engine in ENGINES:
        assert Verifier(key, engine=engine).is_valid(m, sig) is expected, (engine, key.hex(), sig.hex())
    return expected


def test_both_engines_are_tested_here() -> None:
    assert "sodium" in ENGINES
    pytest.importorskip("vodozemac")
    assert "dalek" in ENGINES  # the accelerated engine passed its self-test


@settings(max_examples=150, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), m=st.binary(max_size=200), flip=st.integers(0, 64 * 8 - 1))
def test_valid_and_bit_flipped_signatures(seed: bytes, m: bytes, flip: int) -> None:
    signer = Signer(seed)
    sig = signer.sign(m)
    assert assert_parity(signer.public_bytes, m, sig)
    flipped = bytearray(sig)
    flipped[flip // 8] ^= 1 << (flip % 8)
    assert not assert_parity(signer.public_bytes, m, bytes(flipped))
    if m:
        assert not assert_parity(signer.public_bytes, bytes([m[0] ^ 1]) + m[1:], sig)


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), bit=st.integers(0, 255))
def test_bit_flipped_keys(seed: bytes, bit: int) -> None:
    signer = Signer(seed)
    sig = signer.sign(b"m")
    key = bytearray(signer.public_bytes)
    key[bit // 8] ^= 1 << (bit % 8)
    assert not assert_parity(bytes(key), b"m", sig)


def test_s_not_reduced() -> None:
    signer = Signer(bytes(range(32)))
    for m in (b"", b"m", bytes(100)):
        sig = signer.sign(m)
        s = int.from_bytes(sig[32:], "little")
        for k in range(1, (2**256 - 1 - s) // L + 1):  # S + kL, every multiple that fits
            assert not assert_parity(signer.public_bytes, m, sig[:32] + (s + k * L).to_bytes(32, "little"))
        for s_big in (L, L + 1, 2**253, 2**256 - 1):
            assert not assert_parity(signer.public_bytes, m, sig[:32] + s_big.to_bytes(32, "little"))


def test_small_order_r_satisfying_the_equation() -> None:
    """R = identity and S = h a satisfy the cofactorless equation ([S]B - [h]A = identity):
    RFC 8032 verification accepts that (ed25519-dalek's ``verify``, which vodozemac uses unless
    built with ``strict-signatures``), libsodium does not; nor do we, whatever the engine does."""
    rng = random.Random(7)
    a = rng.randrange(1, L)
    key = _encode(_mul(a, BASE))
    for m in (b"", b"m", b"forged by the key holder"):
        for r_bytes in sorted(SMALL_ORDER_ENCODINGS):
            assert not assert_parity(key, m, _sign(a, key, m, 0, r_bytes=r_bytes))
        honest = _sign(a, key, m, rng.randrange(1, L))
        assert assert_parity(key, m, honest)  # and the pure-Python signer is right


def test_small_order_and_non_canonical_keys() -> None:
    encodings = {_encode(t) for t in _torsion()}
    assert len(encodings) == 8 and encodings <= SMALL_ORDER_ENCODINGS
    weak = set(SMALL_ORDER_ENCODINGS)
    # non-canonical y (p .. 2^255 - 1), both signs, and every bit flip of the small-order ones
    weak |= {(y | s).to_bytes(32, "little") for y in range(P, 2**255) for s in (0, 1 << 255)}
    for e in list(SMALL_ORDER_ENCODINGS):
        weak |= {bytes(b ^ (1 << bit) if i == byte else b for i, b in enumerate(e))
                 for byte in (0, 31) for bit in range(8)}
    rng = random.Random(3)
    for key in sorted(weak):
        if not (int.from_bytes(key, "little") & (2**255 - 1)) < P or key in SMALL_ORDER_ENCODINGS:
            assert not sodium_accepts_key(key)
        for m in (b"", b"m"):
            # (identity, 0) satisfies the equation for the identity key and any message
            for sig in ((1).to_bytes(32, "little") + bytes(32), key + bytes(32), rng.randbytes(64)):
                assert_parity(key, m, sig)


def test_keys_with_a_small_order_component() -> None:
    """A' = aB + T (T of order 8): libsodium accepts a signature made with a iff h T = 0, i.e.
    h = 0 mod 8; so must every engine (rejecting such keys outright would be stricter)."""
    rng = random.Random(11)
    a = rng.randrange(1, L)
    accepted = 0
    for t in _torsion()[1:]:
        key = _encode(_add(_mul(a, BASE), t))
        assert sodium_accepts_key(key)
        for i in range(24):
            accepted += assert_parity(key, b"%d" % i, _sign(a, key, b"%d" % i, rng.randrange(1, L)))
    assert accepted > 0  # some of the 168 were valid (about an eighth of those of order 8)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32))
def test_key_check_matches_libsodium_point_decoding(key: bytes) -> None:
    """For canonical encodings not on the small-order list, a key is usable iff libsodium can
    decode it as a point (``crypto_core_ed25519_add`` decodes and checks both operands)."""
    y = int.from_bytes(key, "little") & (2**255 - 1)
    if y >= P or key in SMALL_ORDER_ENCODINGS:
        assert not sodium_accepts_key(key)
        return
    try:
        nacl.crypto_core_ed25519_add(key, _encode(BASE))
        on_curve = True
    except (NaclValueError, NaclRuntimeError):
        on_curve = False
    assert sodium_accepts_key(key) is on_curve
    if "dalek" in ENGINES:  # Verifier lets dalek decode the point: it must refuse the same keys
        assert (Verifier(key, engine="dalek")._check is not None) is on_curve
    assert_parity(key, b"m", random.Random(y).randbytes(64))


def test_refused_key_verifies_nothing_and_keys_are_32_bytes() -> None:
    identity = (1).to_bytes(32, "little")
    assert not Verifier(identity).is_valid(b"anything", identity + bytes(32))
    with pytest.raises(Exception, match="32 bytes"):
        Verifier(b"short")
