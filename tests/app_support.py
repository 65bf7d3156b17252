"""Helpers of the application tests: a CA on disk, profiles, a real directory process.

Used by ``tests/*/test_app_*.py`` (and free for the UI tests): everything lives under the test's
``tmp_path``; the directory server listens on a socket the OS chose and is handed to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from secchat import pki
from secchat.app.profile import init_profile
from tests.directory_support import ServerProcess

PASSPHRASE = "correct horse battery staple"
CA_PASSPHRASE = "ca passphrase"


def make_ca(directory: Path, passphrase: str = CA_PASSPHRASE) -> Path:
    """A CA in ``directory`` (``ca.key`` encrypted, ``ca.pem``), as ``secchat ca init`` writes it."""
    key, cert = pki.create_ca("App Test CA")
    pki.save_private_key(directory / pki.CA_KEY_FILE, key, passphrase)
    (directory / pki.CA_CERT_FILE).write_bytes(pki.cert_to_pem(cert))
    return directory


def make_profile(root: Path, name: str, url: str, ca_dir: Path) -> Path:
    home = root / name
    init_profile(home, name, PASSPHRASE, url, ca_dir, CA_PASSPHRASE)
    return home


def start_directory(root: Path, ca_dir: Path) -> ServerProcess:
    return ServerProcess(ca_dir / pki.CA_CERT_FILE, f"sqlite:///{root / 'directory.sqlite3'}").start()


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
