"""Every message that members exchange, as frozen typed structs, and the one decoder for them.

Why one module: the wire vocabulary of the whole stack is visible at a glance, the decoder is a
single typed union (msgspec validates types, lengths and ranges before any protocol code runs),
and hypothesis can fuzz exactly what goes over the wire.  Structs are encoded as arrays led by a
small integer type tag (see :mod:`secchat.codec`).  Each message names its protocol instance by
``tag``; the failure detector's heartbeat has no instance.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from ..codec import MAX_FRAME, Decoder, WireTag

__all__ = [
    "Abstain",
    "Ack",
    "Alive",
    "Contribution",
    "Decision",
    "Estimate",
    "Message",
    "Nack",
    "Proposal",
    "PublicKey",
    "RecordHello",
    "SmcData",
    "SmcGone",
    "SmcResend",
    "SmcStatus",
    "decode_message",
    "encode_message",
]

#: Sequence numbers and incarnations are non-negative and fit in 63 bits.
Counter = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
#: Rounds stop at 2^62, so that a member's next round always fits on the wire.
Round = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]
#: A consensus value: for GKE, t member indices and t 32-byte differences.
MAX_VALUE = 64 * 1024
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE)]
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=12, max_length=12)]
Sealed = Annotated[bytes, msgspec.Meta(max_length=256)]
Ciphertext = Annotated[bytes, msgspec.Meta(max_length=MAX_FRAME)]


class _Msg(msgspec.Struct, frozen=True, array_like=True, tag_field="kind"):
    pass


# --------------------------------------------------------------------------- failure detector


class Alive(_Msg, tag=1, frozen=True):
    """Heartbeat of the failure detector (any message counts as one); ``calm``: the sender
    heartbeats at its slow pace (nothing of its own waits on the detector)."""

    calm: bool = False


# --------------------------------------------------------------------------- the group itself


class RecordHello(_Msg, tag=2, frozen=True):
    """Which record of the conference the sender holds: ``tag`` is its group prefix (conference
    id, record digest).  Sent to every member when the stack starts, and answered once
    (``reply``) by each receiver, so two members holding different records of one id both learn
    it at once and say so, instead of stalling in silence.  ``creator`` and ``members`` describe
    the sender's record for that message; they are the sender's word, shown, never trusted."""

    tag: WireTag
    creator: Annotated[str, msgspec.Meta(max_length=64)]
    members: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)]
    reply: bool = False


# --------------------------------------------------------------------------- consensus


class Estimate(_Msg, tag=10, frozen=True):
    """Phase 1: a participant's estimate, to the coordinator of ``round``."""

    tag: WireTag
    round: Round
    ts: Counter
    value: Value


class Proposal(_Msg, tag=11, frozen=True):
    """Phase 2: the coordinator's chosen estimate, to all."""

    tag: WireTag
    round: Round
    value: Value


class Ack(_Msg, tag=12, frozen=True):
    """Phase 3: the participant adopted the coordinator's proposal of ``round``."""

    tag: WireTag
    round: Round


class Nack(_Msg, tag=13, frozen=True):
    """Phase 3: the participant suspected the coordinator of ``round``."""

    tag: WireTag
    round: Round


class Decision(_Msg, tag=14, frozen=True):
    """The decided value; every member relays the first one it receives, once."""

    tag: WireTag
    value: Value


class Abstain(_Msg, tag=15, frozen=True):
    """The sender will never vote in this instance (it restarted and may have voted before):
    treat it as permanently suspected, as if it had crashed."""

    tag: WireTag


# --------------------------------------------------------------------------- group key exchange


class PublicKey(_Msg, tag=20, frozen=True):
    """A member's fresh X25519 session key for one GKE session."""

    tag: WireTag
    key: Key32


class Contribution(_Msg, tag=21, frozen=True):
    """The sender's contribution, sealed to the receiver's session key.

    ``key`` is the sender's own session key, so the receiver can open it without having seen
    the sender's :class:`PublicKey` first.
    """

    tag: WireTag
    key: Key32
    nonce: Nonce
    sealed: Sealed


# --------------------------------------------------------------------------- secure multicast


class SmcData(_Msg, tag=30, frozen=True):
    """One secure multicast message: AEAD(payload ‖ signature) under the group key.

    ``sender``, ``incarnation`` and ``seq`` travel in clear and are bound by the AEAD's associated
    data (and the signature): the link's notion of the sender is not trusted.
    """

    tag: WireTag
    sender: Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]
    incarnation: Counter
    seq: Counter
    nonce: Nonce
    ciphertext: Ciphertext


class SmcStatus(_Msg, tag=31, frozen=True):
    """The sender's place in its own stream (``incarnation``, the next ``seq`` it will use) and a
    confirmation of its key (``confirm``: an HMAC under the key-confirmation key; ``fingerprint``
    names the key for people).  Receivers ask for frames they miss (:class:`SmcResend`) and
    detect two keys for one instance (a fork).  ``reply`` asks for the receiver's status back."""

    tag: WireTag
    incarnation: Counter
    next_seq: Counter
    confirm: Key32
    fingerprint: Annotated[str, msgspec.Meta(max_length=64)]
    reply: bool = False


class SmcResend(_Msg, tag=32, frozen=True):
    """"Send me again your frames ``first`` .. ``end - 1`` of ``incarnation``" (to their sender)."""

    tag: WireTag
    incarnation: Counter
    first: Counter
    end: Counter


class SmcGone(_Msg, tag=33, frozen=True):
    """The sender no longer keeps its frames ``first`` .. ``end - 1`` of ``incarnation``: they
    are lost for this receiver, which skips them and says so."""

    tag: WireTag
    incarnation: Counter
    first: Counter
    end: Counter


Message = Union[  # noqa: UP007
    Alive, RecordHello, Estimate, Proposal, Ack, Nack, Decision, Abstain, PublicKey, Contribution,
    SmcData, SmcStatus, SmcResend, SmcGone,
]

_decoder: Decoder[Message] = Decoder(Message)
_encoder = msgspec.msgpack.Encoder()


def decode_message(data: bytes) -> Message:
    """Decode one frame; raises :class:`secchat.codec.CodecError` on anything malformed."""
    return _decoder.decode(data)


def encode_message(message: Message) -> bytes:
    return _encoder.encode(message)
