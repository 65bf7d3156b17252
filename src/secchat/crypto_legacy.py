"""The thesis's own cipher suite, kept apart and used ONLY by the benchmarks.

Why it exists: §3.2 of the thesis measured RSA signatures + AES-128 against HMAC-MD5 group
authentication; reproducing that comparison next to our suite needs the old primitives.  Nothing
in SecChat's protocols imports this module.  RSA-512 (the thesis's key size) is refused by
``cryptography``; the smallest it allows, RSA-1024, stands in for it.
"""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["LegacySuite"]


class LegacySuite:
    """RSA-1024 PKCS#1 v1.5 / SHA-1 signatures, AES-128-CBC, HMAC-MD5 (benchmark only)."""

    def __init__(self, rsa_bits: int = 1024) -> None:
        self._rsa = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        self._rsa_public = self._rsa.public_key()
        self._aes_key = os.urandom(16)
        self._mac_key = os.urandom(16)

    def sign(self, data: bytes) -> bytes:
        return self._rsa.sign(data, rsa_padding.PKCS1v15(), hashes.SHA1())

    def verify(self, data: bytes, signature: bytes) -> None:
        self._rsa_public.verify(signature, data, rsa_padding.PKCS1v15(), hashes.SHA1())

    def encrypt(self, data: bytes) -> bytes:
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        enc = Cipher(algorithms.AES(self._aes_key), modes.CBC(iv)).encryptor()
        return iv + enc.update(padder.update(data) + padder.finalize()) + enc.finalize()

    def decrypt(self, data: bytes) -> bytes:
        dec = Cipher(algorithms.AES(self._aes_key), modes.CBC(data[:16])).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(dec.update(data[16:]) + dec.finalize()) + unpadder.finalize()

    def mac(self, data: bytes) -> bytes:
        return hmac.digest(self._mac_key, data, "md5")

    def check_mac(self, data: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.mac(data), tag)
