"""SecChat's cipher suite, in one place.

Why these choices (measured on the 2-core development machine, medians of 5 x 2000 calls):

* Signatures: Ed25519 through libsodium (PyNaCl) -- sign 24 us, verify 58 us, against 32 / 106 us
  for the OpenSSL binding.  Certificates are X.509 (``cryptography``); their Ed25519 keys are
  converted to raw 32-byte keys for libsodium.
* Large payloads are never signed directly: Ed25519 hashes its input twice with SHA-512, so the
  SMC layer signs a SHA-256 digest (77 us for 125 KB) instead of the payload (about 320 us).
* Messages: AES-256-GCM through OpenSSL (0.7 us per KiB, 13 us for 125 KB with AES-NI); ChaCha20-
  Poly1305 measured 1.1 / 39 us and is not used.
* GKE contributions are sealed under an AEAD key derived with HKDF-SHA256 from one X25519 exchange
  (libsodium, 31 us; OpenSSL 33 us with key parsing) between the two members' ephemeral session
  keys, bound to the session tag,
  both indices and both public keys -- cheaper than an HPKE seal + open and as strong here,
  because the links below are authenticated.
* HKDF-SHA256 and HMAC-SHA256 are built on the standard library's C ``hmac.digest``.
* Burst signing (SMC ``auth="burst"``) signs one Merkle root over a burst: the tree is RFC 9162's
  (SHA-256, leaf prefix 0x00, node prefix 0x01, unbalanced trees split at the largest power of
  two), so a path is at most ``ceil(log2 count)`` hashes and its verification is the RFC's.
* Pairwise MACs (SMC ``auth="pairwise"``) use a static X25519 secret per pair of members, from
  their Ed25519 identity keys converted by libsodium (``crypto_sign_ed25519_*_to_curve25519``):
  always available, with no exchange, for every pair; SMC binds it to the instance tag by HKDF.

Nothing here logs or formats key material; :func:`fingerprint` is the only printable view of a key.
The thesis's own suite (RSA, AES-128-CBC, HMAC-MD5) lives apart in :mod:`secchat.crypto_legacy`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as _nacl
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import VerifyKey

from .codec import canonical

__all__ = [
    "AEAD_KEY_SIZE",
    "NONCE_SIZE",
    "SIGNATURE_SIZE",
    "Aead",
    "CryptoError",
    "EphemeralKey",
    "GroupKeys",
    "Rng",
    "Signer",
    "SystemRng",
    "Verifier",
    "derive_group_keys",
    "digest",
    "fingerprint",
    "hkdf",
    "hmac_sha256",
    "merkle_leaf",
    "merkle_root_from_path",
    "merkle_tree",
]

AEAD_KEY_SIZE = 32
NONCE_SIZE = 12
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
_HASH_LEN = 32


class CryptoError(Exception):
    """A cryptographic check failed: bad signature, failed decryption, invalid public key."""


class Rng(Protocol):
    """Injected randomness: ``random.Random(seed)`` in the simulator, :class:`SystemRng` live."""

    def randbytes(self, n: int, /) -> bytes: ...


class SystemRng:
    """The operating system's CSPRNG."""

    @staticmethod
    def randbytes(n: int, /) -> bytes:
        return os.urandom(n)


# --------------------------------------------------------------------------- hashing and KDF


def digest(data: bytes) -> bytes:
    """SHA-256."""
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand."""
    if not 0 < length <= 255 * _HASH_LEN:
        raise ValueError("HKDF output length out of range")
    prk = hmac.digest(salt or bytes(_HASH_LEN), ikm, "sha256")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def fingerprint(key: bytes) -> str:
    """A short, one-way, printable name for a secret key (safe to show and log)."""
    return hmac.digest(key, b"secchat fingerprint v1", "sha256")[:8].hex()


# --------------------------------------------------------------------------- Merkle trees (RFC 9162)

_sha256 = hashlib.sha256
MERKLE_HASH_SIZE = 32


def merkle_leaf(data: bytes) -> bytes:
    h = _sha256(b"\x00")
    h.update(data)
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def merkle_tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``leaves`` (at least one) and each leaf's audit path, leaf upwards."""
    if not leaves:
        raise ValueError("a Merkle tree has at least one leaf")
    if len(leaves) == 1:
        return leaves[0], [[]]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below the count
    left, left_paths = merkle_tree(leaves[:split])
    right, right_paths = merkle_tree(leaves[split:])
    return _node(left, right), [[*p, right] for p in left_paths] + [[*p, left] for p in right_paths]


def merkle_root_from_path(leaf: bytes, index: int, count: int, path: bytes) -> bytes:
    """The root that ``path`` (its nodes concatenated, leaf upwards) proves leaf ``index`` of
    ``count`` under (RFC 9162, 2.1.3.2); :class:`CryptoError` if the path's shape does not fit
    the position."""
    if not 0 <= index < count:
        raise CryptoError("leaf index out of range")
    if len(path) % MERKLE_HASH_SIZE:
        raise CryptoError("audit path of a partial node")
    fn, sn, r = index, count - 1, leaf
    for at in range(0, len(path), MERKLE_HASH_SIZE):
        if sn == 0:
            raise CryptoError("audit path too long")
        p = path[at : at + MERKLE_HASH_SIZE]
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CryptoError("audit path too short")
    return r


# --------------------------------------------------------------------------- signatures


class Signer:
    """An Ed25519 private key (libsodium)."""

    __slots__ = ("_secret", "public_bytes")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        # libsodium's bindings directly: PyNaCl's SigningKey wraps every signature in objects
        # (1.2 us of a 20 us signature)
        self.public_bytes, self._secret = _nacl.crypto_sign_seed_keypair(bytes(seed))

    @classmethod
    def generate(cls, rng: Rng | None = None) -> Signer:
        return cls((rng or SystemRng()).randbytes(32))

    @classmethod
    def from_private_key(cls, key) -> Signer:
        """From a ``cryptography`` ``Ed25519PrivateKey`` (as loaded from a key store)."""
        from cryptography.hazmat.primitives import serialization

        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(raw)

    def sign(self, data: bytes) -> bytes:
        return _nacl.crypto_sign(data, self._secret)[:SIGNATURE_SIZE]

    def verifier(self) -> Verifier:
        return Verifier(self.public_bytes)

    def static_secret(self, peer: Verifier) -> bytes:
        """The X25519 secret of this identity key and ``peer``'s, both converted from Ed25519
        (the same 32 bytes on both sides).  Raw: derive keys from it with :func:`hkdf`."""
        mine = _nacl.crypto_sign_ed25519_sk_to_curve25519(self._secret)
        try:
            theirs = _nacl.crypto_sign_ed25519_pk_to_curve25519(peer.public_bytes)
            return _nacl.crypto_scalarmult(mine, theirs)
        except (NaclRuntimeError, NaclValueError, TypeError):
            raise CryptoError("no X25519 secret with this public key") from None

    def __repr__(self) -> str:  # never show the seed
        return f"Signer(public={self.public_bytes[:6].hex()}...)"


class Verifier:
    """An Ed25519 public key (libsodium)."""

    __slots__ = ("public_bytes",)

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != PUBLIC_KEY_SIZE:
            raise CryptoError("an Ed25519 public key is 32 bytes")
        try:
            VerifyKey(bytes(public_bytes))  # refuses keys libsodium cannot use
        except (NaclValueError, TypeError) as exc:
            raise CryptoError(f"invalid Ed25519 public key: {exc}") from None
        self.public_bytes = bytes(public_bytes)

    @classmethod
    def from_public_key(cls, key) -> Verifier:
        """From a ``cryptography`` ``Ed25519PublicKey`` (as found in a certificate)."""
        from cryptography.hazmat.primitives import serialization

        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise :class:`CryptoError` unless ``signature`` is valid on ``data``."""
        if len(signature) != SIGNATURE_SIZE:
            raise CryptoError("bad signature length")
        try:
            _nacl.crypto_sign_open(signature + data, self.public_bytes)
        except (BadSignatureError, NaclValueError):
            raise CryptoError("bad signature") from None

    def is_valid(self, data: bytes, signature: bytes) -> bool:
        try:
            self.verify(data, signature)
        except CryptoError:
            return False
        return True


# --------------------------------------------------------------------------- AEAD


class Aead:
    """AES-256-GCM with 96-bit nonces."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != AEAD_KEY_SIZE:
            raise ValueError("an AEAD key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise CryptoError("bad nonce length")
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError, OverflowError):
            raise CryptoError("decryption failed") from None

    def __repr__(self) -> str:
        return "Aead(<secret>)"


# --------------------------------------------------------------------------- key agreement


class EphemeralKey:
    """A fresh X25519 key pair for one GKE session (libsodium: 31 us an exchange, 17 us a key)."""

    __slots__ = ("_secret", "public_bytes")

    def __init__(self, rng: Rng) -> None:
        self._secret = rng.randbytes(32)
        self.public_bytes: bytes = _nacl.crypto_scalarmult_base(self._secret)

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public``; low-order points are refused."""
        if len(peer_public) != PUBLIC_KEY_SIZE:
            raise CryptoError("an X25519 public key is 32 bytes")
        try:
            # libsodium refuses (all-zero result) low-order points
            return _nacl.crypto_scalarmult(self._secret, peer_public)
        except (NaclRuntimeError, NaclValueError, TypeError):
            raise CryptoError("invalid X25519 public key") from None

    def __repr__(self) -> str:
        return f"EphemeralKey(public={self.public_bytes[:6].hex()}...)"


# --------------------------------------------------------------------------- group keys


@dataclass(frozen=True, slots=True, repr=False)
class GroupKeys:
    """The working keys derived from a GKE result; the raw group secret is never used directly."""

    encryption: bytes
    mac: bytes
    confirmation: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.confirmation)

    def __repr__(self) -> str:
        return f"GroupKeys(fingerprint={self.fingerprint})"


def derive_group_keys(secret: int, tag: tuple, members: tuple[int, ...]) -> GroupKeys:
    """HKDF-SHA256 from the group secret, bound to the session tag and the decided member list."""
    okm = hkdf(
        secret.to_bytes(32, "big"),
        salt=b"secchat/gke/group-key/v1",
        info=canonical("group-keys", tag, members),
        length=3 * AEAD_KEY_SIZE,
    )
    return GroupKeys(okm[:32], okm[32:64], okm[64:])
