"""The one canonical wire encoding of SecChat.

Why: everything that is signed, MACed, hashed into a key or sent between members goes through
this module, so two members (or a member and the directory) can never disagree about the bytes
that a signature covers.  The encoding is MessagePack as produced by ``msgspec``: integers in
their shortest form, ``bytes`` as ``bin``, ``str`` as UTF-8 ``str``, tuples and lists as arrays,
structs as arrays (``array_like``) led by a small integer type tag.  For a given value there is
exactly one encoding, and no dict (whose order could vary) is ever part of signed data.

Tags name protocol instances.  They are tuples such as ``("conf-7", "smc", 0, "gke")`` and are
encoded as arrays, so two different (conference, protocol, epoch) triples can never collide the
way string concatenations ``"a|b" + "c"`` and ``"a" + "|bc"`` could.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

import msgspec

__all__ = [
    "MAX_FRAME",
    "MAX_TAG_PART",
    "MAX_TAG_PARTS",
    "CodecError",
    "Decoder",
    "Tag",
    "TagPart",
    "WireTag",
    "canonical",
    "canonical_int",
    "canonical_tuple",
    "check_tag",
    "decode",
    "encode",
]

#: Largest frame (one encoded message) accepted anywhere; a 125 KB chat payload fits with room.
MAX_FRAME = 1 << 20
#: Limits on protocol-instance tags.
MAX_TAG_PARTS = 8
MAX_TAG_PART = 128

TagPart = str | int
#: A structured protocol-instance name, e.g. ``("conf-7", "smc", 0, "gke", "consensus")``.
Tag = tuple[TagPart, ...]
#: The decoder-side type of a tag: bounded in length and part size.
WireTag = Annotated[
    tuple[Annotated[str, msgspec.Meta(max_length=MAX_TAG_PART)] | Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)], ...],
    msgspec.Meta(min_length=1, max_length=MAX_TAG_PARTS),
]

T = TypeVar("T")


class CodecError(ValueError):
    """Bytes that are not a valid encoding of the expected type (peer junk, never our bug)."""

    code = "malformed"

    def __init__(self, message: str, *, code: str = "malformed") -> None:
        super().__init__(message)
        self.code = code


_encoder = msgspec.msgpack.Encoder()


def encode(value: Any) -> bytes:
    """Encode a struct or plain value canonically."""
    return _encoder.encode(value)


def canonical(*fields: Any) -> bytes:
    """The canonical bytes of a tuple of fields: what signatures, MACs and KDF labels cover."""
    return _encoder.encode(fields)


#: ``canonical(*fields)`` for a tuple already made, ``canonical_tuple(fields)``: the encoder's
#: own method, with no Python frame around it (for what runs once per message)
canonical_tuple: Callable[[tuple], bytes] = _encoder.encode
#: the canonical bytes of one integer field: appended to a tuple's encoding made without its
#: last field (a stream's associated data, :meth:`secchat.protocols.smc.SecureMulticast._aad`)
canonical_int: Callable[[int], bytes] = _encoder.encode


def check_tag(tag: Tag) -> Tag:
    """Validate a locally constructed tag (our misuse raises ``ValueError``)."""
    if not isinstance(tag, tuple) or not 1 <= len(tag) <= MAX_TAG_PARTS:
        raise ValueError(f"a tag is a tuple of 1..{MAX_TAG_PARTS} parts, got {tag!r}")
    for part in tag:
        if isinstance(part, bool) or not isinstance(part, str | int):
            raise ValueError(f"tag parts are str or int, got {part!r}")
        if isinstance(part, str) and len(part) > MAX_TAG_PART:
            raise ValueError(f"tag part longer than {MAX_TAG_PART} characters")
        if isinstance(part, int) and not 0 <= part < 1 << 63:
            raise ValueError("integer tag parts are in [0, 2**63)")
    return tag


class Decoder(Generic[T]):
    """A typed, size-limited decoder; every failure becomes a :class:`CodecError`."""

    def __init__(self, type_: type[T] | Any, *, max_size: int = MAX_FRAME) -> None:
        self._decoder = msgspec.msgpack.Decoder(type_)
        self.max_size = max_size

    def decode(self, data: bytes) -> T:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        if len(data) > self.max_size:
            raise CodecError(f"frame of {len(data)} bytes exceeds the limit of {self.max_size}", code="oversized")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise CodecError(f"invalid message: {exc}", code="invalid") from None
        except (msgspec.DecodeError, ValueError) as exc:  # includes UnicodeDecodeError on bad str
            raise CodecError(f"undecodable message: {exc}") from None


def decode(data: bytes, type_: type[T], *, max_size: int = MAX_FRAME) -> T:
    """One-off typed decode (prefer a module-level :class:`Decoder` on hot paths)."""
    return Decoder(type_, max_size=max_size).decode(data)
