"""Frames and envelopes of the link layer: round trips, and junk refused with a typed error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secchat.codec import MAX_FRAME
from secchat.net.errors import FrameError, LinkError
from secchat.net.framing import (
    MAX_FRAME_BODY,
    Data,
    FrameDecoder,
    Goodbye,
    Hello,
    decode_message,
    encode_data,
    encode_frame,
    encode_goodbye,
    encode_hello,
)


def test_data_round_trip():
    frame = encode_data("conf-1", b"payload")
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    [body] = FrameDecoder().feed(frame)
    assert decode_message(body) == Data("conf-1", b"payload")


def test_goodbye_round_trip():
    [body] = FrameDecoder().feed(encode_goodbye())
    assert decode_message(body) == Goodbye()


def test_hello_round_trip():
    [body] = FrameDecoder().feed(encode_hello(40001))
    assert decode_message(body) == Hello(40001)


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8), st.integers(1, 64))
def test_any_split_of_the_stream_gives_the_same_frames(payloads, step):
    stream = b"".join(encode_data("g", p) for p in payloads)
    decoder = FrameDecoder()
    bodies = []
    for i in range(0, len(stream), step):
        bodies += decoder.feed(stream[i : i + step])
    decoder.eof()
    assert [decode_message(b).payload for b in bodies] == payloads
    assert decoder.buffered == 0


def test_oversized_length_is_refused_at_the_header():
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(struct.pack(">I", MAX_FRAME_BODY + 1))
    assert info.value.code == "oversized"
    assert isinstance(info.value, LinkError)
    assert decoder.buffered == 0  # nothing kept from a peer that lied about the length


def test_a_failed_decoder_stays_failed():
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameError):
        decoder.feed(encode_data("g", b"fine"))


def test_zero_length_frame_is_refused():
    with pytest.raises(FrameError) as info:
        FrameDecoder().feed(b"\0\0\0\0")
    assert info.value.code == "empty_frame"


def test_truncated_frame_at_eof():
    decoder = FrameDecoder()
    assert decoder.feed(encode_data("g", b"0123456789")[:-3]) == []
    with pytest.raises(FrameError) as info:
        decoder.eof()
    assert info.value.code == "truncated"


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"garbage", b"\x93\x02\xa1g\x01", b"\x92\x09\x00", b"\x93\x02\xa0\xc4\x00"],
)
def test_garbage_envelope_is_a_frame_error(body):
    with pytest.raises(FrameError) as info:
        decode_message(body)
    assert info.value.code.startswith("envelope_")


def test_our_own_oversized_message_is_a_value_error():
    with pytest.raises(ValueError):
        encode_data("g", bytes(MAX_FRAME + 1))
    with pytest.raises(ValueError):
        encode_data("", b"x")
    with pytest.raises(ValueError):
        encode_frame(bytes(10), max_size=5)


def test_maximal_payload_fits():
    frame = encode_data("g" * 128, bytes(MAX_FRAME))
    [body] = FrameDecoder().feed(frame)
    assert len(decode_message(body).payload) == MAX_FRAME
