"""SecChat's cipher suite, in one place.

Why these choices (measured on the 2-core development machine, medians of 5 x 2000 calls):

* Signatures: Ed25519, signed by libsodium (PyNaCl, 24 us).  Verified by ed25519-dalek through
  vodozemac where installed (46 us a verification through :class:`Verifier`, against 60 us for
  libsodium's ``crypto_sign_verify_detached`` and 119 us for OpenSSL 4.1 via ``cryptography``;
  medians of 15 interleaved rounds), else by libsodium -- accepting exactly libsodium's set of
  signatures either way (see :class:`Verifier`).  Certificates are X.509 (``cryptography``);
  their Ed25519 keys are converted to raw 32-byte keys.
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

import binascii
import contextlib
import functools
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as _nacl
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.exceptions import ValueError as NaclValueError

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


# Ed25519 verification accepts exactly what libsodium's crypto_sign_verify_detached accepts,
# whichever engine does the arithmetic.  libsodium's rules (ed25519/ref10/open.c): S canonical
# (S < L), R not of small order, A canonical and not of small order and on the curve, and the
# cofactorless equation, checked by comparing the encoding of [S]B - [h]A with R's bytes.  The
# checks on A are made once, when a Verifier is made; S and R are checked here before the engine
# runs, so an engine that is laxer on them (ed25519-dalek's RFC 8032 ``verify`` accepts a small-
# order R) accepts no more than libsodium.  tests/unit/test_ed25519_parity.py compares them.

#: the order of the base point, the field prime and the curve constant d
_L = 2**252 + 27742317777372353535851937790883648493
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
#: libsodium's ``ge25519_has_small_order`` list: the y coordinates, canonical or not, of the
#: points of order 1, 2, 4 and 8; it ignores the sign bit, so both signs of each are listed
_SMALL_ORDER_Y = (
    0,
    1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
    _P - 1,
    _P,
    _P + 1,
)
SMALL_ORDER_ENCODINGS = frozenset(
    (y | sign).to_bytes(32, "little") for y in _SMALL_ORDER_Y for sign in (0, 1 << 255)
)


def _canonical_and_not_small(public_bytes: bytes) -> bool:
    """libsodium's checks of a key's encoding: y < p, and not on its small-order list."""
    return (
        len(public_bytes) == PUBLIC_KEY_SIZE
        and bytes(public_bytes) not in SMALL_ORDER_ENCODINGS
        and int.from_bytes(public_bytes, "little") & ((1 << 255) - 1) < _P
    )


def sodium_accepts_key(public_bytes: bytes) -> bool:
    """Whether libsodium verifies anything under this Ed25519 key: its encoding canonical (y < p),
    not of small order, and a point of the curve (libsodium's own checks, made per signature
    there).  Points with a small-order component (mixed order) pass, as in libsodium.  (The
    reference, in Python; :class:`Verifier` lets its engine decode the point, 50x faster.)"""
    if not _canonical_and_not_small(public_bytes):
        return False
    y = int.from_bytes(public_bytes, "little") & ((1 << 255) - 1)
    yy = y * y % _P
    # x^2 = u / v with u = y^2 - 1, v = d y^2 + 1 (never 0: d is not a square) must have a
    # root, x = 0 only for y = +-1 (listed above).  u / v = u v / v^2 is a square iff u v is:
    # one exponentiation (Euler's criterion), no inverse
    return pow((yy - 1) * (_D * yy + 1) % _P, (_P - 1) // 2, _P) == 1


#: (data, signature) -> valid, once the prechecks passed.  An engine makes one for a key of
#: canonical encoding not on the small-order list, and raises :class:`CryptoError` if it can
#: tell that the key is not a point of the curve (libsodium's engine leaves that to libsodium)
_Check = Callable[[bytes, bytes], bool]


@functools.cache
def _sodium_detached() -> Callable[[bytes, bytes, int, bytes], int] | None:
    """libsodium's ``crypto_sign_verify_detached`` from the library PyNaCl loaded (its bindings
    offer only ``crypto_sign_open``, which copies signature and message twice); None if it is
    not there.  Looked up when first needed: most runs verify with dalek."""
    try:
        import ctypes

        from nacl import _sodium

        detached = ctypes.CDLL(_sodium.__file__).crypto_sign_verify_detached
    except (ImportError, OSError, AttributeError):
        return None
    detached.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p)
    detached.restype = ctypes.c_int
    return detached


def _sodium_engine(public: bytes) -> _Check:
    """libsodium: ``crypto_sign_verify_detached`` if found, else ``crypto_sign_open``."""
    detached = _sodium_detached()
    if detached is not None:
        return lambda data, sig: detached(sig, data, len(data), public) == 0

    def check(data: bytes, sig: bytes) -> bool:
        try:
            _nacl.crypto_sign_open(sig + data, public)
        except (BadSignatureError, NaclValueError):
            return False
        return True

    return check


def _dalek_engine() -> Callable[[bytes], _Check] | None:
    """ed25519-dalek through vodozemac (its Python binding takes keys and signatures as base64
    only): 0.84x libsodium's time on the development machine (median of 15 interleaved rounds:
    50.2 against 59.6 us).  None if vodozemac is missing or fails a self-test against libsodium."""
    try:
        import vodozemac
    except ImportError:
        return None
    b64 = binascii.b2a_base64
    key_from, sig_from = vodozemac.Ed25519PublicKey.from_base64, vodozemac.Ed25519Signature.from_base64
    errors = (vodozemac.SignatureException, vodozemac.KeyException)

    def engine(public: bytes) -> _Check:
        try:  # decoding the point: it fails iff libsodium's does (the y of no point)
            key = key_from(b64(public, newline=False).decode())
        except errors:
            raise CryptoError("not a point of the curve") from None

        def check(data: bytes, sig: bytes) -> bool:
            try:
                key.verify_signature(data, sig_from(b64(sig, newline=False).decode()))
            except errors:
                return False
            return True

        return check

    # a build that verifies nothing (vodozemac's fuzzing builds accept everything) is not used
    secret = _nacl.crypto_sign_seed_keypair(bytes(range(32)))
    good = _nacl.crypto_sign(b"self-test", secret[1])[:SIGNATURE_SIZE]
    try:
        check = engine(secret[0])
        ok = check(b"self-test", good) and not check(b"self-tesT", good)
        ok = ok and not check(b"self-test", good[:40] + bytes([good[40] ^ 1]) + good[41:])
    except Exception:  # a binding of another shape: not used
        return None
    return engine if ok else None


#: the engines at hand, fastest first; ``SECCHAT_ED25519=sodium`` in the environment picks
#: libsodium whatever else is installed
ENGINES: dict[str, Callable[[bytes], _Check]] = {}
if (_dalek := _dalek_engine()) is not None:
    ENGINES["dalek"] = _dalek
ENGINES["sodium"] = _sodium_engine
ENGINE = os.environ.get("SECCHAT_ED25519") or next(iter(ENGINES))
if ENGINE not in ENGINES:
    raise ImportError(f"SECCHAT_ED25519={ENGINE!r}: choose one of {', '.join(ENGINES)}")


class Verifier:
    """An Ed25519 public key, verifying what libsodium would (see :data:`ENGINES`)."""

    __slots__ = ("_check", "public_bytes")

    def __init__(self, public_bytes: bytes, *, engine: str | None = None) -> None:
        if len(public_bytes) != PUBLIC_KEY_SIZE:
            raise CryptoError("an Ed25519 public key is 32 bytes")
        if not isinstance(public_bytes, bytes | bytearray | memoryview):
            raise CryptoError("an Ed25519 public key is bytes")
        self.public_bytes = bytes(public_bytes)
        # a key libsodium refuses verifies nothing (libsodium checks it with every signature):
        # the encoding here, the point by the engine
        self._check: _Check | None = None
        if _canonical_and_not_small(self.public_bytes):
            with contextlib.suppress(CryptoError):  # not a point: it stays None
                self._check = ENGINES[engine or ENGINE](self.public_bytes)

    @classmethod
    def from_public_key(cls, key) -> Verifier:
        """From a ``cryptography`` ``Ed25519PublicKey`` (as found in a certificate)."""
        from cryptography.hazmat.primitives import serialization

        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise :class:`CryptoError` unless ``signature`` is valid on ``data``."""
        if len(signature) != SIGNATURE_SIZE:
            raise CryptoError("bad signature length")
        signature, data = bytes(signature), bytes(data)
        check = self._check
        # libsodium's checks of R and S, before any engine (the key's were made in __init__)
        if (
            check is None
            or signature[:32] in SMALL_ORDER_ENCODINGS
            or (signature[63] & 0xF0 and int.from_bytes(signature[32:], "little") >= _L)
            or not check(data, signature)
        ):
            raise CryptoError("bad signature")

    def is_valid(self, data: bytes, signature: bytes) -> bool:
        try:
            self.verify(data, signature)
        except CryptoError:
            return False
        return True


# --------------------------------------------------------------------------- AEAD


class Aead:
    """AES-256-GCM with 96-bit nonces."""

    __slots__ = ("_aead", "seal")

    def __init__(self, key: bytes) -> None:
        if len(key) != AEAD_KEY_SIZE:
            raise ValueError("an AEAD key is 32 bytes")
        self._aead = AESGCM(key)
        #: ``seal(nonce, plaintext, aad)``: the ciphertext and its tag.  AESGCM's own method,
        #: with no Python frame around it (called once per message sent)
        self.seal: Callable[[bytes, bytes, bytes], bytes] = self._aead.encrypt

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
    """A fresh X25519 key pair for one GKE session.

    The exchange runs in OpenSSL (through ``cryptography``): 30 us here against libsodium's 37
    (medians, 2026-12-06), and a group of n does about n²/2 of them.  Both clamp the scalar
    (RFC 7748), so a key re-created from its saved seed is the same key either way, and both
    refuse the low-order points (an all-zero shared secret)."""

    __slots__ = ("_key", "public_bytes")

    def __init__(self, rng: Rng) -> None:
        self._key = x25519.X25519PrivateKey.from_private_bytes(rng.randbytes(32))
        self.public_bytes: bytes = self._key.public_key().public_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public``; low-order points are refused."""
        if len(peer_public) != PUBLIC_KEY_SIZE:
            raise CryptoError("an X25519 public key is 32 bytes")
        try:
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except (ValueError, TypeError):  # OpenSSL refuses an all-zero result: a low-order point
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
