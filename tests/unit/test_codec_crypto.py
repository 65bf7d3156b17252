from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secchat.codec import CodecError, Decoder, canonical, check_tag
from secchat.crypto import (
    Aead,
    CryptoError,
    EphemeralKey,
    Signer,
    Verifier,
    derive_group_keys,
    hkdf,
)

parts = st.one_of(st.text(max_size=8), st.integers(min_value=0, max_value=1000))


@given(st.lists(parts, min_size=1, max_size=4), st.lists(parts, min_size=1, max_size=4))
def test_distinct_tags_have_distinct_encodings(a: list, b: list) -> None:
    if tuple(a) != tuple(b):
        assert canonical(tuple(a)) != canonical(tuple(b))


def test_no_concatenation_ambiguity() -> None:
    assert canonical(("a|b", "c")) != canonical(("a", "b|c"))


@pytest.mark.parametrize("bad", [(), ("x",) * 9, ("x" * 200,), (True,), (-1,), (1.5,), "notatuple"])
def test_bad_local_tags_are_our_misuse(bad) -> None:
    with pytest.raises(ValueError):
        check_tag(bad)


def test_decoder_limits_size() -> None:
    with pytest.raises(CodecError) as info:
        Decoder(bytes, max_size=10).decode(b"\xc4\x20" + b"x" * 32)
    assert info.value.code == "oversized"


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_signatures() -> None:
    s = Signer(bytes(32))
    sig = s.sign(b"m")
    s.verifier().verify(b"m", sig)
    with pytest.raises(CryptoError):
        s.verifier().verify(b"n", sig)
    with pytest.raises(CryptoError):
        Verifier(b"short")
    assert "Signer(" in repr(s) and bytes(32).hex() not in repr(s)


def test_aead_refuses_tampering() -> None:
    a = Aead(bytes(32))
    ct = a.seal(bytes(12), b"secret", b"aad")
    assert a.open(bytes(12), ct, b"aad") == b"secret"
    for nonce, data, aad in [(bytes(12), ct, b"other"), (b"\x01" * 12, ct, b"aad"), (bytes(12), ct[:-1] + b"\x00", b"aad")]:
        with pytest.raises(CryptoError):
            a.open(nonce, data, aad)


def test_x25519_agrees_and_refuses_low_order_points() -> None:
    rng = random.Random(1)
    a, b = EphemeralKey(rng), EphemeralKey(rng)
    assert a.exchange(b.public_bytes) == b.exchange(a.public_bytes)
    # the points of small order on Curve25519 and its twist (all-zero shared secret), and a
    # non-canonical encoding of one of them: every one refused
    low_order = [bytes(32), (1).to_bytes(32, "little"),
                 bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
                 bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
                 bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
                 bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")]
    for point in low_order:
        with pytest.raises(CryptoError):
            a.exchange(point)
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(CryptoError, match="32 bytes"):
            a.exchange(bad)


def test_x25519_in_openssl_gives_libsodiums_keys_and_secrets() -> None:
    """A session key re-made from its saved seed is the one an earlier run (libsodium) made."""
    from nacl import bindings

    rng = random.Random(2)
    for _ in range(20):
        seed = rng.randbytes(32)
        key = EphemeralKey(_Fixed(seed))
        assert key.public_bytes == bindings.crypto_scalarmult_base(seed)
        peer = bindings.crypto_scalarmult_base(rng.randbytes(32))
        assert key.exchange(peer) == bindings.crypto_scalarmult(seed, peer)


class _Fixed:
    def __init__(self, seed: bytes) -> None:
        self.seed = seed

    def randbytes(self, n: int) -> bytes:
        return self.seed[:n]


def test_group_keys_are_bound_to_tag_and_members() -> None:
    k = derive_group_keys(12345, ("c", "smc", 0), (0, 1, 2))
    assert k != derive_group_keys(12345, ("c", "smc", 1), (0, 1, 2))
    assert k.encryption != derive_group_keys(12345, ("c", "smc", 0), (0, 1, 3)).encryption
    assert len({k.encryption, k.mac, k.confirmation}) == 3
    assert k.encryption.hex() not in repr(k)


def test_verification_refuses_malleated_and_weak_key_signatures() -> None:
    from secchat.crypto import CryptoError, Signer, Verifier

    order = 2**252 + 27742317777372353535851937790883648493
    signer = Signer.generate()
    verifier = signer.verifier()
    sig = signer.sign(b"m")
    verifier.verify(b"m", sig)
    s_plus_order = (int.from_bytes(sig[32:], "little") + order).to_bytes(32, "little")
    with pytest.raises(CryptoError):
        verifier.verify(b"m", sig[:32] + s_plus_order)  # the same signature, S not reduced
    # the identity as a public key: (R = identity, S = 0) satisfies the equation for any message;
    # libsodium refuses weak keys
    identity = bytes([1]) + bytes(31)
    with pytest.raises(CryptoError):
        Verifier(identity).verify(b"anything", identity + bytes(32))
