"""Identities that last: when a registered name may get a new certificate, and how peers follow.

Why: a certificate ends (365 days by default) and a key may have to be replaced, but the
directory is untrusted and a name must not pass to whoever gets the CA to sign it.  So a new
certificate for a registered name is one of:

- a **renewal**: the same key, the same issuer, a certificate issued later (``not_valid_before``
  after the registered one's) -- peers pin the key, not the certificate, so it is silent;
- a **rotation**: another key, with an :class:`~.models.IdentityRotation` signed by the
  registered key -- the directory keeps the proof and serves it with the entry, so that a peer
  who accepted the old key checks the chain of rotations itself and says "alice rotated her key
  (signed by her old one)";
- anything else is refused (``identity_taken``; ``bad_rotation_signature`` for a proof that does
  not verify): a new key without proof is what a stolen name looks like.

Pure functions, no I/O: the server calls :func:`classify`, the client :func:`verify_chain`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from secchat import pki
from secchat.crypto import CryptoError, Verifier

from .models import MAX_ROTATIONS, IdentityRotation, RotationIn, RotationOut

__all__ = [
    "ROTATION_FILE",
    "IdentityError",
    "Update",
    "classify",
    "proof_for",
    "public_key",
    "rotation_of",
    "save_proof",
    "verify_chain",
]


class IdentityError(Exception):
    """A new certificate or a chain of rotations that is refused; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Update(enum.Enum):
    SAME = "same"  # the registered certificate again
    RENEWAL = "renewal"  # same key and issuer, a newer certificate
    ROTATION = "rotation"  # another key, proven by the registered one


def public_key(cert: x509.Certificate) -> bytes:
    """The raw Ed25519 public key of a certificate (what peers pin)."""
    return pki.verifier_of(cert).public_bytes


def rotation_of(cert: x509.Certificate, old_key: bytes, rotated_at: int) -> IdentityRotation:
    """The statement a rotation to ``cert``'s key signs (by ``old_key``)."""
    identity = pki.identity_of(cert)
    return IdentityRotation(identity.name, identity.issuer, old_key, public_key(cert), rotated_at)


def _check_signature(rotation: IdentityRotation, signature: bytes) -> None:
    try:
        Verifier(rotation.old_key).verify(rotation.signed_bytes(), signature)
    except (CryptoError, ValueError):
        raise IdentityError(
            "bad_rotation_signature",
            f"the key rotation of {rotation.name} is not signed by its old key",
        ) from None


def classify(
    current: x509.Certificate,
    new: x509.Certificate,
    rotation: tuple[bytes, int, bytes] | None,
) -> Update:
    """What registering ``new`` over the registered ``current`` certificate of the same name is;
    ``rotation`` is ``(old_key, rotated_at, signature)`` if the request carries a proof.
    :class:`IdentityError` if it is to be refused."""
    name = pki.identity_of(current).name
    if pki.fingerprint(current) == pki.fingerprint(new):
        return Update.SAME
    if pki.identity_of(new).issuer != pki.identity_of(current).issuer:
        raise IdentityError(
            "identity_taken",
            f"the name {name!r} is registered with a certificate of another CA",
        )
    old_key, new_key = public_key(current), public_key(new)
    if new_key == old_key:
        if new.not_valid_before_utc <= current.not_valid_before_utc:
            raise IdentityError(
                "stale_certificate",
                f"this certificate of {name!r} is not newer than the registered one",
            )
        return Update.RENEWAL
    if rotation is None:
        raise IdentityError(
            "identity_taken",
            f"the name {name!r} is registered with another key; a new key needs a rotation"
            " signed by the registered one (`secchat identity rotate`)",
        )
    claimed_old, rotated_at, signature = rotation
    if claimed_old != old_key:
        raise IdentityError(
            "bad_rotation_signature",
            f"the key rotation of {name!r} is not signed by its registered key",
        )
    _check_signature(rotation_of(new, old_key, rotated_at), signature)
    return Update.ROTATION


def verify_chain(
    name: str, issuer: str, rotations: Sequence[RotationOut], current_key: bytes
) -> tuple[bytes, ...]:
    """Check a participant's rotations as the directory served them (oldest first): each signed
    by the key before it, each following the one before, the last ending at ``current_key``.
    Returns the keys the chain proves were this identity's before (oldest first); ``()`` for no
    rotations, or a chain that ends at another key (it proves nothing about this one);
    :class:`IdentityError` for a chain that does not hold (a bad signature, a gap)."""
    if not rotations:
        return ()
    if len(rotations) > MAX_ROTATIONS:
        raise IdentityError("malformed_response", f"more than {MAX_ROTATIONS} key rotations of {name}")
    keys: list[bytes] = []
    previous_new: bytes | None = None
    for r in rotations:
        try:
            old, new, signature = (
                bytes.fromhex(r.old_key), bytes.fromhex(r.new_key), bytes.fromhex(r.signature)
            )
        except ValueError:
            raise IdentityError("malformed_response", f"a key rotation of {name} is malformed") from None
        if previous_new is not None and old != previous_new:
            raise IdentityError("bad_rotation_signature", f"the key rotations of {name} do not follow")
        _check_signature(IdentityRotation(name, issuer, old, new, r.rotated_at), signature)
        keys.append(old)
        previous_new = new
    if previous_new != current_key:
        return ()  # rotations to another key than this certificate's prove nothing about it
    return tuple(keys)


# --------------------------------------------------------------------------- the proof on disk

#: In an identity directory: the rotation proof ``secchat identity rotate`` signed with the old
#: key, sent with the next ``register`` while the certificate has the rotated-to key.
ROTATION_FILE = "rotation.json"


def save_proof(path: Path, rotation: IdentityRotation, signature: bytes) -> None:
    data = {
        "name": rotation.name,
        "issuer": rotation.issuer,
        "old_key": rotation.old_key.hex(),
        "new_key": rotation.new_key.hex(),
        "rotated_at": rotation.rotated_at,
        "signature": signature.hex(),
    }
    pki.write_file_atomically(path, json.dumps(data, indent=1).encode("utf-8"), 0o600)


def proof_for(directory: Path, cert: x509.Certificate) -> RotationIn | None:
    """The rotation proof in ``directory`` if it is for ``cert``'s key (else None: nothing to
    prove, or a proof of an earlier rotation)."""
    path = Path(directory) / ROTATION_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        proof = RotationIn(str(data["old_key"]), int(data["rotated_at"]), str(data["signature"]))
        new_key = bytes.fromhex(str(data["new_key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError("corrupt", f"the rotation proof {path} is unreadable: {exc}") from None
    return proof if new_key == public_key(cert) else None
