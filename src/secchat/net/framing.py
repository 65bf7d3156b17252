"""Length-prefixed frames and the link-level envelope.

Why: TLS gives us an authenticated byte stream; the layers above exchange whole messages.  A
frame is a 4-byte big-endian length followed by that many bytes, at most
:data:`secchat.codec.MAX_FRAME` plus the envelope's overhead.  The decoder is incremental (feed
it whatever the socket returned) and fails for good on the first bad frame, like h11: a peer that
sent one malformed length cannot be trusted to be in sync again, so the connection is dropped.

Inside a frame sits one :class:`LinkMessage`, encoded through :mod:`secchat.codec`:

* :class:`Hello` -- sent once by each side right after the handshake; it names the conference
  groups the sender serves and the TCP port it listens on, so an inbound connection teaches
  the address of its peer (PT2PTLink: "once a connection was established, both got the
  address of the other peer").
* :class:`Data` -- one protocol message for the sans-I/O member of group ``group``.
* :class:`Ack` -- an explicit acknowledgement; together with ``Data.seq`` / ``Data.ack`` and the
  ``Hello`` fields it makes the link reliable across reconnections (see :mod:`.links`).
* :class:`Goodbye` -- the sender will write nothing more on this connection; a connection is
  closed once both sides said goodbye, so retiring a redundant connection loses no frame.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

from ..codec import MAX_FRAME, CodecError, Decoder, encode
from .errors import FrameError

__all__ = [
    "ENVELOPE_OVERHEAD",
    "HEADER",
    "MAX_FRAME_BODY",
    "MAX_GROUP_ID",
    "Ack",
    "Data",
    "FrameDecoder",
    "Goodbye",
    "Hello",
    "LinkMessage",
    "check_data",
    "data_size",
    "decode_message",
    "encode_ack",
    "encode_data",
    "encode_frame",
    "encode_goodbye",
    "encode_hello",
]

HEADER = struct.Struct(">I")
#: Longest conference (group) id carried in an envelope.
MAX_GROUP_ID = 128
#: Room for the envelope around a maximal protocol message.
ENVELOPE_OVERHEAD = 256
#: Largest frame body accepted on a link.
MAX_FRAME_BODY = MAX_FRAME + ENVELOPE_OVERHEAD

GroupId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_GROUP_ID)]


Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class Hello(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """First message on every connection, each way.

    ``session`` names this run of the sender's link layer (random, fresh at every start);
    ``ack_session`` / ``ack_next``: the receiver's view of *our* frames -- the session it last
    heard from us and the next sequence number it expects of it; ``resend_from``: the lowest
    sequence number the sender may still (re)send, where a receiver new to ``session`` starts.
    """

    listen_port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    session: Seq = 0
    ack_session: Seq = 0
    ack_next: Seq = 0
    resend_from: Seq = 0


class Data(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """One message of the protocol stack of conference ``group``.

    ``seq`` numbers the sender's frames to this peer within its session; ``ack`` acknowledges
    the receiver's frames (the next sequence number expected), piggybacked.
    """

    group: GroupId
    payload: Annotated[bytes, msgspec.Meta(max_length=MAX_FRAME)]
    seq: Seq = 0
    ack: Seq = 0


class Ack(msgspec.Struct, array_like=True, frozen=True, tag=4):
    """An explicit acknowledgement (when there is no data to piggyback it on)."""

    next: Seq


class Goodbye(msgspec.Struct, array_like=True, frozen=True, tag=3):
    """"I send nothing more on this connection" (its last frame from us; we still read it)."""


LinkMessage = Hello | Data | Goodbye | Ack

_decoder: Decoder[LinkMessage] = Decoder(LinkMessage, max_size=MAX_FRAME_BODY)


def encode_frame(body: bytes, *, max_size: int = MAX_FRAME_BODY) -> bytes:
    """Prefix ``body`` with its length; our own oversized body is our bug (``ValueError``)."""
    if len(body) > max_size:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the limit of {max_size}")
    return HEADER.pack(len(body)) + body


def check_data(group: str, payload: bytes) -> None:
    """Refuse (``ValueError``, our misuse) what no frame could carry."""
    if not 1 <= len(group) <= MAX_GROUP_ID:
        raise ValueError(f"a group id has 1..{MAX_GROUP_ID} characters")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the limit of {MAX_FRAME}")


def data_size(group: str, payload: bytes) -> int:
    """What one data frame counts against the links' byte bounds: payload, group id, envelope."""
    return len(payload) + len(group) + 32


def encode_data(group: str, payload: bytes, seq: int = 0, ack: int = 0) -> bytes:
    """The complete frame (header included) carrying ``payload`` for ``group``."""
    check_data(group, payload)
    return encode_frame(encode(Data(group, bytes(payload), seq, ack)))


def encode_hello(listen_port: int, session: int = 0, ack_session: int = 0, ack_next: int = 0,
                 resend_from: int = 0) -> bytes:
    return encode_frame(encode(Hello(listen_port, session, ack_session, ack_next, resend_from)))


def encode_ack(next_seq: int) -> bytes:
    return encode_frame(encode(Ack(next_seq)))


def encode_goodbye() -> bytes:
    return encode_frame(encode(Goodbye()))


def decode_message(body: bytes) -> LinkMessage:
    """Decode one frame body; junk raises :class:`FrameError`."""
    try:
        return _decoder.decode(body)
    except CodecError as exc:
        raise FrameError(f"bad envelope: {exc}", code=f"envelope_{exc.code}") from None


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    :meth:`feed` returns the complete frame bodies found so far.  The buffer never holds more than
    one maximal frame: a length above ``max_size`` (or zero) is refused as soon as the header is
    seen, without waiting for the body.  After an error the decoder stays failed.
    """

    __slots__ = ("_buffer", "_failed", "max_size")

    def __init__(self, *, max_size: int = MAX_FRAME_BODY) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.max_size:
                self._buffer = bytearray()
                self._failed = FrameError(
                    f"frame length {length} outside 1..{self.max_size}",
                    code="oversized" if length else "empty_frame",
                )
                raise self._failed
            if len(buf) - pos - HEADER.size < length:
                break
            start = pos + HEADER.size
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames

    def eof(self) -> None:
        """The stream ended: a partial frame left over is a truncation."""
        if self._failed is None and self._buffer:
            pending = len(self._buffer)
            self._buffer = bytearray()
            self._failed = FrameError(f"stream ended inside a frame ({pending} bytes pending)", code="truncated")
            raise self._failed
