"""Unlock cost of the identity key store and the history, by KDF: what a guess costs an attacker.

Prints the KDF parameters of a freshly written key store, the median time to write it, to unlock
it and to open a profile's history under the same passphrase, and the old format's (PKCS#8 under
PBKDF2) unlock for comparison.  One core; the load average is printed next to the medians.

    python benchmarks/bench_keystore.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from secchat import pki
from secchat.app.history import HistoryStore
from secchat.passphrase import PASSPHRASE_KDF

PASSPHRASE = "correct horse battery staple"


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    key = pki.generate_key()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity" / "identity.key"
        save = _median_ms(lambda: pki.save_private_key(path, key, PASSPHRASE), args.repeat)
        unlock = _median_ms(lambda: pki.load_private_key(path, PASSPHRASE), args.repeat)
        HistoryStore(Path(tmp) / "history.sqlite3", PASSPHRASE).close()
        history = _median_ms(
            lambda: HistoryStore(Path(tmp) / "history.sqlite3", PASSPHRASE).close(), args.repeat
        )
        old = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
        legacy = _median_ms(
            lambda: serialization.load_pem_private_key(old, PASSPHRASE.encode()), args.repeat
        )
        kdf = pki.key_store_kdf(path)
    memory = 128 * PASSPHRASE_KDF.n * PASSPHRASE_KDF.r // (1 << 20)
    print(f"key store KDF        {kdf} ({memory} MiB per guess)")
    print(f"write key store      {save:8.1f} ms  (median of {args.repeat})")
    print(f"unlock key store     {unlock:8.1f} ms")
    print(f"open history         {history:8.1f} ms  (same KDF, its own salt)")
    print(f"unlock a profile     {unlock + history:8.1f} ms  (key store + history)")
    print(f"old format unlock    {legacy:8.2f} ms  (PKCS#8, PBKDF2-SHA256, 2048 iterations)")
    print(f"load average         {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
