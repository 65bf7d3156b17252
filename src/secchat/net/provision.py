"""Generate a conference CA and member identities, in memory or on disk (launcher and tests).

Why: the local cluster, the benchmark and the integration tests all need "a CA and one
certificate per member"; they get it here, through :mod:`secchat.pki`, so that no second way
of making certificates exists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import pki
from .tls import PinSet, TlsCredentials

__all__ = ["MemberFiles", "MemberIdentity", "credentials", "make_identities", "pins", "write_identities"]


@dataclass(frozen=True)
class MemberIdentity:
    name: str
    key: object = field(repr=False)
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class MemberFiles:
    name: str
    key_path: Path
    cert_path: Path


def make_identities(
    names: Sequence[str], *, ca_name: str = "SecChat test CA"
) -> tuple[x509.Certificate, list[MemberIdentity]]:
    """A fresh CA and one identity per name, in memory."""
    if len(set(names)) != len(names):
        raise ValueError("member names must be distinct")
    ca_key, ca_cert = pki.create_ca(ca_name)
    members = []
    for name in names:
        key = pki.generate_key()
        members.append(MemberIdentity(name, key, pki.issue_certificate(ca_key, ca_cert, name, key.public_key())))
    return ca_cert, members


def credentials(member: MemberIdentity, ca_cert: x509.Certificate) -> TlsCredentials:
    return TlsCredentials(member.key, member.cert, (ca_cert,))


def pins(members: Sequence[MemberIdentity]) -> PinSet:
    return PinSet((m.name, m.der) for m in members)


def write_identities(
    directory: Path, ca_cert: x509.Certificate, members: Sequence[MemberIdentity], passphrase: str
) -> tuple[Path, list[MemberFiles]]:
    """Write ``ca.pem`` and ``<name>.pem`` / ``<name>.key`` (encrypted) under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_path = directory / pki.CA_CERT_FILE
    ca_path.write_bytes(pki.cert_to_pem(ca_cert))
    files = []
    for m in members:
        cert_path = directory / f"{m.name}.pem"
        key_path = directory / f"{m.name}.key"
        cert_path.write_bytes(pki.cert_to_pem(m.cert))
        pki.save_private_key(key_path, m.key, passphrase)  # type: ignore[arg-type]
        files.append(MemberFiles(m.name, key_path, cert_path))
    return ca_path, files
