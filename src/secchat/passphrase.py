"""Passphrases: how long a new one must be, and how one becomes a key.

Why one module: the identity key store (:mod:`secchat.pki`) and the local history
(:mod:`secchat.app.history`) are both protected by the user's one passphrase, so an attacker
who copies the profile attacks whichever of the two is cheaper to test guesses against.  Both
therefore derive their keys here, with the same memory-hard KDF and the same cost.

The KDF is scrypt (RFC 7914) with N = 2^17, r = 8, p = 1: 128 MiB of memory and about 0.4 s per
guess on one core of the development machine (``benchmarks/bench_keystore.py`` prints it), well
under the one second we allow for unlocking.  Argon2id would do as well (libsodium has it);
scrypt is what ``cryptography`` ships, so it costs no dependency.  The parameters are stored next
to every derived key, so they can be raised later without breaking old files; files written with
weaker parameters are upgraded when they are next opened.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "PASSPHRASE_KDF",
    "PassphraseKdf",
    "WeakPassphrase",
    "check_new_passphrase",
]

#: A passphrase chosen now must have at least this many characters.
MIN_PASSPHRASE_LENGTH = 8


class WeakPassphrase(ValueError):
    """A new passphrase is too short; ``str(e)`` is one sentence for the user."""


def check_new_passphrase(passphrase: str) -> None:
    """Refuse a passphrase being *chosen* (not one being typed to unlock) that is too short."""
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise WeakPassphrase(
            f"a passphrase needs at least {MIN_PASSPHRASE_LENGTH} characters"
            f" (this one has {len(passphrase)}); a few unrelated words are best"
        )


@dataclass(frozen=True, slots=True)
class PassphraseKdf:
    """scrypt's cost parameters.  ``n`` is a power of two; memory is ``128 * n * r`` bytes."""

    n: int
    r: int = 8
    p: int = 1

    #: What a file may ask for: enough room to raise the cost, not enough for a hostile file to
    #: make us allocate gigabytes (2^20 * 8 * 128 B = 1 GiB at most).
    MAX_LOG2_N = 20

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > 1 << self.MAX_LOG2_N:
            raise ValueError(f"scrypt's N must be a power of two up to 2^{self.MAX_LOG2_N}")
        if not 1 <= self.r <= 32 or not 1 <= self.p <= 16:
            raise ValueError("scrypt's r must be in 1..32 and p in 1..16")

    def derive(self, passphrase: str, salt: bytes, length: int = 32) -> bytes:
        """The key of ``length`` bytes for ``passphrase`` (UTF-8) and ``salt``."""
        kdf = Scrypt(salt=salt, length=length, n=self.n, r=self.r, p=self.p)
        return kdf.derive(passphrase.encode("utf-8"))

    def weaker_than(self, other: PassphraseKdf) -> bool:
        """Whether a file under these parameters should be re-encrypted under ``other``."""
        return self.n * self.r * self.p < other.n * other.r * other.p

    def describe(self) -> str:
        return f"scrypt N=2^{self.n.bit_length() - 1} r={self.r} p={self.p}"


#: The parameters every new key store and history file is written with.
PASSPHRASE_KDF = PassphraseKdf(n=1 << 17, r=8, p=1)
