"""SMC authentication modes (protocols/auth.py): bursts, pairwise MACs, and hostile trailers.

Each hostile frame is a valid AEAD frame under the group key (what an insider can build), fed to
a receiver before the real frame reaches it: it must be refused with its reason, deliver
nothing and change nothing (the real frame is delivered afterwards).
"""

from __future__ import annotations

import pytest

from secchat.crypto import MERKLE_HASH_SIZE
from secchat.protocols.auth import MAC_SIZE, MODES, BurstSignatures, authenticator_class
from secchat.protocols.events import Delivered
from secchat.protocols.messages import SmcData, decode_message, encode_message
from secchat.protocols.smc import SmcLimits
from secchat.protocols.stack import Member, StackConfig, smc_tag
from secchat.sim.checker import impersonate, retarget
from secchat.sim.simulator import Simulation

TAG = smc_tag("sim")


def _group(auth: str, n: int = 3, limits: SmcLimits | None = None) -> Simulation:
    sim = Simulation(n, 9, config=StackConfig(smc=limits or SmcLimits()))
    for i in range(n):
        sim.start(i, lambda m, now: m.smc_init(TAG, now, auth=auth))
    sim.run(5.0)
    assert all(node.member.smc(TAG).established for node in sim.nodes)
    sim.keep_wire_log = True
    return sim


def _member(sim: Simulation, i: int) -> Member:
    member = sim.nodes[i].member
    assert member is not None
    return member


def _send_burst(sim: Simulation, sender: int, payloads: list[bytes]) -> list[SmcData]:
    """``payloads`` multicast in one turn; their frames, still in flight."""
    start = len(sim.wire_log)

    def burst(m: Member, now: float) -> None:
        for p in payloads:
            m.multicast(TAG, p, now)

    sim.call(sender, burst)
    frames = [decode_message(d) for _, s, d in sim.wire_log[start:] if s == sender and d[1:2] == b"\x1e"]
    assert all(isinstance(f, SmcData) for f in frames)
    return frames  # type: ignore[return-value]


def _plain(sim: Simulation, frame: SmcData) -> bytes:
    smc = _member(sim, 2).smc(TAG)
    assert smc is not None and smc._aead is not None
    return smc._aead.open(frame.nonce, frame.ciphertext, smc._aad(frame.sender, frame.incarnation, frame.seq))


def _reseal(sim: Simulation, frame: SmcData, plain: bytes, seq: int | None = None) -> bytes:
    """An insider (member 2) re-encrypts ``plain`` as ``frame`` (or at ``seq``)."""
    smc = _member(sim, 2).smc(TAG)
    assert smc is not None and smc._aead is not None
    seq = frame.seq if seq is None else seq
    nonce = bytes(12)
    ct = smc._aead.seal(nonce, plain, smc._aad(frame.sender, frame.incarnation, seq))
    return encode_message(SmcData(frame.tag, frame.sender, frame.incarnation, seq, nonce, ct))


def _refused(sim: Simulation, data: bytes, reason: str, receiver: int = 1) -> None:
    member = _member(sim, receiver)
    before = member.stats[f"smc.dropped.{reason}"]
    member.receive(2, data, sim.now)
    events = member.take_events()
    assert not [e for e in events if isinstance(e, Delivered)], events
    assert member.stats[f"smc.dropped.{reason}"] == before + 1, dict(member.stats)


def _delivered(sim: Simulation, i: int, sender: int = 0) -> list[bytes]:
    return [ev.payload for _, ev in sim.nodes[i].outputs if isinstance(ev, Delivered) and ev.sender == sender]


def test_modes_are_chosen_by_name_and_unknown_names_are_refused() -> None:
    assert MODES == ("signed", "burst", "pairwise", "group")
    with pytest.raises(ValueError, match="unknown SMC mode 'fast'"):
        authenticator_class("fast")
    with pytest.raises(ValueError, match="burst_max"):
        SmcLimits(burst_max=0)


@pytest.mark.parametrize("auth", MODES)
def test_every_mode_delivers_bursts_and_isolated_messages_in_order(auth: str) -> None:
    sim = _group(auth, n=4)
    _send_burst(sim, 0, [b"a", b"b" * 2000, b"c"])
    _send_burst(sim, 0, [b"alone"])
    sim.run(sim.now + 1.0)
    for i in (1, 2, 3):
        assert _delivered(sim, i) == [b"a", b"b" * 2000, b"c", b"alone"]


def test_an_isolated_message_leaves_in_the_same_turn() -> None:
    sim = _group("burst")
    member = _member(sim, 0)
    member.multicast(TAG, b"now", sim.now)
    out = member.take_outgoing()
    assert [decode_message(o.data).seq for o in out if o.data[1:2] == b"\x1e"] == [0]


def test_a_burst_is_signed_once_and_verified_once() -> None:
    sim = _group("burst")
    frames = _send_burst(sim, 0, [f"m{k}".encode() for k in range(5)])
    sigs = {_plain(sim, f)[-69:-5] for f in frames}
    assert len(frames) == 5 and len(sigs) == 1  # one signature in all five
    sim.run(sim.now + 1.0)
    auth = _member(sim, 1).smc(TAG).auth
    assert isinstance(auth, BurstSignatures) and len(auth._verified) == 1


def test_bursts_are_bounded_and_the_root_cache_too() -> None:
    sim = _group("burst", limits=SmcLimits(burst_max=4, root_cache=2))
    frames = _send_burst(sim, 0, [f"m{k}".encode() for k in range(10)])
    counts = [int.from_bytes(_plain(sim, f)[-2:], "big") for f in frames]
    assert counts == [4] * 4 + [4] * 4 + [2] * 2
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 1) == [f"m{k}".encode() for k in range(10)]
    assert len(_member(sim, 1).smc(TAG).auth._verified) == 2


def test_burst_forged_path_is_refused() -> None:
    sim = _group("burst")
    frames = _send_burst(sim, 0, [b"x", b"y", b"z"])
    plain = bytearray(_plain(sim, frames[1]))
    plain[1] ^= 0x40  # the first path node (payload "y" is one byte)
    _refused(sim, _reseal(sim, frames[1], bytes(plain)), "bad_path")
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 1) == [b"x", b"y", b"z"]


def test_burst_wrong_root_signature_is_refused() -> None:
    sim = _group("burst")
    frames = _send_burst(sim, 0, [b"x", b"y"])
    plain = bytearray(_plain(sim, frames[0]))
    plain[-6] ^= 1  # last byte of the signature
    _refused(sim, _reseal(sim, frames[0], bytes(plain)), "bad_signature")
    # a root that the path leads to but that the sender never signed: the insider's own tree
    fake = impersonate(_member(sim, 2).smc(TAG), sim.signers[2], 0, 0, 0, b"x")
    _refused(sim, encode_message(fake), "bad_signature")
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 1) == [b"x", b"y"]


def test_burst_frame_whose_path_verifies_for_another_message_is_refused() -> None:
    sim = _group("burst")
    frames = _send_burst(sim, 0, [b"x", b"y", b"z"])
    plain1 = _plain(sim, frames[1])
    # message 1 with its own path, presented as the burst's message 2: the path leads to the real
    # root from index 1, so the position (first seq) the signature covers does not fit
    _refused(sim, _reseal(sim, frames[1], plain1, seq=2), "bad_signature")
    # message 2's payload under message 1's path (and root, and signature)
    _refused(sim, encode_message(retarget(_member(sim, 2).smc(TAG), frames[1], b"z", b"y")), "bad_path")
    # a trailer cut short, or with a path longer than the frame
    _refused(sim, _reseal(sim, frames[1], plain1[-50:]), "bad_trailer")
    _refused(sim, _reseal(sim, frames[1], plain1[:-5] + bytes((200,)) + plain1[-4:]), "bad_trailer")
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 1) == [b"x", b"y", b"z"]


def test_pairwise_mac_meant_for_another_receiver_is_refused() -> None:
    sim = _group("pairwise")
    (frame,) = _send_burst(sim, 0, [b"for 1 and 2"])
    plain = _plain(sim, frame)
    body, macs = plain[: -2 * MAC_SIZE], plain[-2 * MAC_SIZE :]
    for_1, for_2 = macs[:MAC_SIZE], macs[MAC_SIZE:]
    assert for_1 != for_2
    # member 2's MAC in member 1's slot
    _refused(sim, _reseal(sim, frame, body + for_2 + for_2), "bad_mac")
    # member 2 (an insider) claims to be member 0, MACs made with its own pair keys
    fake = impersonate(_member(sim, 2).smc(TAG), sim.signers[2], 0, 0, 0, b"i am 0")
    _refused(sim, encode_message(fake), "bad_mac")
    # another payload under the real MACs
    _refused(sim, encode_message(retarget(_member(sim, 2).smc(TAG), frame, b"other", b"for 1 and 2")), "bad_mac")
    _refused(sim, _reseal(sim, frame, plain[:10]), "bad_trailer")
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 1) == [b"for 1 and 2"]


def test_pairwise_mode_is_for_small_groups() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        authenticator_class("pairwise")(TAG, 0, 65, None, [], None)  # type: ignore[arg-type]


def test_merkle_paths_fit_their_trees() -> None:
    from secchat.crypto import CryptoError, merkle_leaf, merkle_root_from_path, merkle_tree

    for count in range(1, 40):
        leaves = [merkle_leaf(bytes([k])) for k in range(count)]
        root, paths = merkle_tree(leaves)
        assert all(len(p) <= (count - 1).bit_length() for p in paths)
        for k in range(count):
            assert merkle_root_from_path(leaves[k], k, count, b"".join(paths[k])) == root
            if count > 1:
                assert merkle_root_from_path(leaves[(k + 1) % count], k, count, b"".join(paths[k])) != root
        with pytest.raises(CryptoError):
            merkle_root_from_path(leaves[0], 0, count, b"".join(paths[0]) + bytes(MERKLE_HASH_SIZE))
