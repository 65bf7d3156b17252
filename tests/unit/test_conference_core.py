"""``ConferenceCore`` alone: inputs in, actions out (no stack, no clock).

The whole-stack properties are the simulator's (``secchat sim check --protocol conference``,
tests/sim); these pin the rules one by one, including the attacks of issue 9.
"""

from __future__ import annotations

import time

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from secchat.app.conference import (
    ChatMessage,
    CloseEpoch,
    ConferenceCore,
    ConferenceState,
    CoreConfig,
    CoreError,
    EpochHint,
    JoinEpoch,
    Multicast,
    Notice,
    Persist,
    Rekey,
    Seen,
    Show,
    Store,
    Text,
    decode_payload,
)

MEMBERS = ("ann", "ben", "cy")


def core(me: str = "ann", **kw) -> ConferenceCore:
    c = ConferenceCore("room", MEMBERS, me, 0.0, **kw)
    c.start()
    c.take_actions()
    return c


def sends(actions) -> list:
    return [(a.epoch, decode_payload(a.payload)) for a in actions if isinstance(a, Multicast)]


def shown(actions, kind=ChatMessage) -> list:
    return [a.event for a in actions if isinstance(a, Show) and isinstance(a.event, kind)]


def text(mid: int, body: str = "x", floor: int = 1) -> bytes:
    return msgspec.msgpack.encode(Text(mid, floor, body, 1.0))


def test_outbox_is_persisted_before_the_key_and_sent_in_the_epoch_that_gets_one():
    c = core()
    c.send_text("one", 1.0)
    acts = c.take_actions()
    assert not sends(acts)  # no key: nothing handed to the stack
    [persist] = [a for a in acts if isinstance(a, Persist)]
    assert [o.text for o in persist.outbox_add] == ["one"] and persist.state.next_mid == 2
    c.rekey(1.5)
    acts = c.take_actions()
    assert JoinEpoch(1) in acts and CloseEpoch(0) in acts
    c.on_key(1, "f1", (0, 1), 2.0)
    acts = c.take_actions()
    assert [(e, p.text, p.mid) for e, p in sends(acts) if isinstance(p, Text)] == [(1, "one", 1)]
    assert [m.state for m in shown(acts)] == ["sent"]


def test_unconfirmed_messages_go_again_in_the_next_epoch_and_receivers_drop_duplicates():
    a, b = core("ann"), core("ben")
    for c in (a, b):
        c.on_key(0, "f0", (0, 1), 1.0)
        c.take_actions()
    a.send_text("hi", 1.1)
    [(_, frame)] = [s for s in sends(a.take_actions()) if isinstance(s[1], Text)]
    b.on_delivered(0, 0, msgspec.msgpack.encode(frame), 1.2)
    assert [m.text for m in shown(b.take_actions())] == ["hi"]
    # ben re-keys; ann follows and, with epoch 1's key, sends "hi" again (cy never confirmed it)
    a.on_delivered(0, 1, msgspec.msgpack.encode(Rekey(1)), 1.3)
    assert JoinEpoch(1) in a.take_actions()
    a.on_key(1, "f1", (0, 1), 1.4)
    again = [p for _, p in sends(a.take_actions()) if isinstance(p, Text)]
    assert [p.text for p in again] == ["hi"]
    b.on_delivered(1, 0, msgspec.msgpack.encode(again[0]), 1.5)
    assert shown(b.take_actions()) == [] and b.stats["core.dropped.duplicate"] == 1


def test_per_sender_order_holds_across_gaps_and_a_given_up_gap_is_told():
    c = core()
    c.on_delivered(0, 1, text(1, "a"), 1.0)
    c.on_delivered(0, 1, text(3, "c"), 1.0)  # 2 is missing: 3 waits
    assert [m.text for m in shown(c.take_actions())] == ["a"]
    c.on_delivered(0, 1, text(2, "b"), 1.0)
    assert [m.text for m in shown(c.take_actions())] == ["b", "c"]
    # ben gave up 4..9 (its floor is 10): we take 10 and say what was lost
    c.on_delivered(0, 1, text(10, "j", floor=10), 1.0)
    acts = c.take_actions()
    assert [m.text for m in shown(acts)] == ["j"]
    assert any("6 messages from ben were lost" in n.text for n in shown(acts, Notice))


def test_a_restarted_member_never_delivers_again_what_it_delivered():
    c = core()
    c.on_delivered(0, 1, text(1, "a"), 1.0)
    c.on_delivered(0, 1, text(2, "b"), 1.0)
    acts = c.take_actions()
    state = [a for a in acts if isinstance(a, Persist)][-1].state
    stored = [a.message.text for a in acts if isinstance(a, Store)]
    assert stored == ["a", "b"] and state.delivered == {"ben": 2}
    again = ConferenceCore("room", MEMBERS, "ann", 5.0, state=state)
    again.start()
    again.take_actions()
    for mid in (1, 2):  # replays: of before the restart, in any epoch
        again.on_delivered(3, 1, text(mid), 6.0)
    again.on_delivered(3, 1, text(3, "c"), 6.0)
    assert [m.text for m in shown(again.take_actions())] == ["c"]


def test_rekeys_are_rate_limited_and_only_e_plus_1_counts():
    c = core(config=CoreConfig(move_interval=2.0))
    c.on_key(0, "f0", (0, 1), 0.5)
    c.take_actions()
    # a flood: 1,000 re-key requests from ben over epoch 0, most for far epochs
    for k in range(1000):
        c.on_delivered(0, 1, msgspec.msgpack.encode(Rekey(k)), 1.0)
    acts = c.take_actions()
    assert c.epoch == 1 and [a.epoch for a in acts if isinstance(a, JoinEpoch)] == [1]
    assert c.stats["core.dropped.bad_rekey"] == 999
    # ben shows up in epochs 2..5 at once (its frames for instances we lack): one move, later
    for e in range(2, 6):
        c.on_instance_seen(e, 1, 1.1)
    assert c.epoch == 1 and c.next_deadline() == 3.0
    c.handle_timer(3.0)
    assert c.epoch == 5  # as far as one member's word goes (follow_window = 4)
    # our own re-key is limited too
    c.rekey(3.5)
    try:
        c.rekey(4.0)
        raise AssertionError("a second re-key within the interval was accepted")
    except CoreError as exc:
        assert exc.code == "rekey_too_soon"


def test_one_member_cannot_take_us_far_but_two_can():
    c = core()
    c.on_instance_seen(1000, 1, 1.0)
    assert c.epoch == 0
    c.on_instance_seen(1000, 2, 1.0)
    assert c.epoch == 1000


def test_at_most_two_epochs_are_open():
    c = core(config=CoreConfig(move_interval=0.0))
    c.on_key(0, "f0", (0, 1), 0.1)
    for e in range(1, 30):
        c.on_instance_seen(e, 1 + e % 2, float(e))
        c.handle_timer(float(e))
        assert len(c.open_epochs) <= 2
    c.on_key(c.epoch, "f", (0, 1), 50.0)
    assert c.open_epochs == {c.epoch}


def test_an_abstaining_member_moves_on_when_no_key_comes():
    c = core(config=CoreConfig(abstain_grace=3.0))
    c.on_joined(0, abstains=True, now=1.0)
    c.take_actions()
    c.handle_timer(4.0)
    acts = c.take_actions()
    assert c.epoch == 1 and JoinEpoch(1) in acts
    assert any("starting epoch 1" in n.text for n in shown(acts, Notice))
    # with the decision (the key) in time, it does not
    d = core(config=CoreConfig(abstain_grace=3.0))
    d.on_joined(0, abstains=True, now=1.0)
    d.on_key(0, "f0", (1, 2), 2.0)
    d.handle_timer(4.0)
    assert d.epoch == 0


def test_receipts_cost_o_entries_and_turn_messages_delivered():
    c = core()
    c.on_key(0, "f0", (0, 1), 0.5)
    for k in range(1500):
        c.send_text(f"m{k}", 1.0)
    c.take_actions()
    # an oversized receipt (more entries than members) is refused without looking at it
    c.on_delivered(0, 1, msgspec.msgpack.encode(Seen([(0, 1)] * 1024)), 2.0)
    assert c.stats["core.dropped.oversized_receipt"] == 1
    t0 = time.perf_counter()
    for k in range(1, 1501, 10):
        c.on_delivered(0, 1, msgspec.msgpack.encode(Seen([(0, k)])), 2.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed  # each of our messages is confirmed by ben once: O(entries + messages)
    c.on_delivered(0, 2, msgspec.msgpack.encode(Seen([(0, 1 << 40)])), 2.0)  # cy claims the future
    acts = c.take_actions()
    delivered = [m for m in shown(acts) if m.state == "delivered"]
    assert delivered and delivered[-1].seen_by == ("ben", "cy")
    assert c.state.acked["cy"] == 1500  # clipped to what we sent
    assert len(c.outbox()) == 1500 - 1491  # what both confirmed left the outbox


def test_a_hint_tells_where_we_are_when_a_member_is_behind():
    c = core()
    c.on_instance_seen(1, 1, 0.5)
    c.on_key(1, "f1", (0, 1), 1.0)
    c.take_actions()
    c.on_closed_epoch_frame(0, 2, 2.0)
    c.handle_timer(2.0)
    assert (1, EpochHint(1)) in sends(c.take_actions())


_any_payload = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, f, t, s: msgspec.msgpack.encode({"type": "text", "mid": m, "floor": f, "text": t, "sent_at": s}),
              st.integers(-5, 2**64 - 1), st.integers(-5, 2**64 - 1), st.text(max_size=20),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda e: msgspec.msgpack.encode({"type": "rekey", "epoch": e}), st.integers(-(2**63), 2**64 - 1)),
    st.builds(lambda e: msgspec.msgpack.encode({"type": "epoch", "epoch": e}), st.integers(-(2**63), 2**64 - 1)),
    st.builds(lambda u: msgspec.msgpack.encode({"type": "seen", "upto": u}),
              st.lists(st.tuples(st.integers(-3, 70000), st.integers(-3, 2**63 - 1)), max_size=8)),
)


@settings(max_examples=300, deadline=None)
@given(data=_any_payload, sender=st.integers(-2, 5), epoch=st.integers(0, 3))
def test_hostile_payloads_never_escape_or_break_the_epoch(data, sender, epoch):
    c = core()
    c.on_key(0, "f0", (0, 1), 0.1)
    c.on_delivered(epoch, sender, data, 1.0)
    c.handle_timer(100.0)
    acts = c.take_actions()
    assert 0 <= c.epoch <= 4
    assert all(0 <= a.epoch < 1 << 48 for a in acts if isinstance(a, JoinEpoch))
    assert isinstance(c.state, ConferenceState)
