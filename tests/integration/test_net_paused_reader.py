"""A reader paused during a bulk send is not silenced: issue 9, over real member processes.

m0 multicasts 20,000 messages of 2 kB to m1 and m2.  m1 is stopped (SIGSTOP) once it has 2,000
of them and continued (SIGCONT) once m0 has sent 12,000: meanwhile its link queue filled and
tail-dropped (the links are bounded, as designed), so m1 comes back to a gap of thousands of
frames, with m0's stream going on behind it -- and m0 goes on dropping for m1 until it sees m1
read again.  m1 asks for the gap; m0 answers from its retransmission store, newest frame first
(the frames sent while m1 was coming back must get through, whatever the link's queue cuts off),
and with ``SmcGone`` for what the store no longer holds, which m1 reports lost; every message m0
sends once m1 is back is delivered to it, in order, exactly once.  (Before, every later frame was
dropped as beyond the reorder window; then, the answer to the ask came after the window was full.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from .netproc import Member, world
from .test_net_restarts import ESTABLISH, _config, _signal, _stop_all

BULK, SIZE = 20_000, 2_000
#: reconnect quickly, but do not tear down a link that a loaded machine is slow to acknowledge
LINKS = {"retry_initial": 0.05, "retry_max": 0.5, "connect_timeout": 5.0, "stall_timeout": 5.0}
PAUSE_AT, CONTINUE_AT = 2_000, 12_000


def _seqs(member: Member, sender: str) -> list[int]:
    return [e["seq"] for _, e in member.events if e["event"] == "delivered" and e["sender"] == sender]


def _lost(member: Member, sender: str) -> list[tuple[int, int]]:
    return sorted((e["first"], e["end"]) for _, e in member.of("lost") if e["sender"] == sender)


async def _paused_during_bulk(tmp: Path) -> None:
    names = ["m0", "m1", "m2"]
    _, _, ca_path, files = world(tmp, names)
    procs: dict[str, Member] = {}
    stopped: set[str] = set()
    t_start = time.monotonic()
    try:
        procs["m0"] = await Member.start("m0", _config(tmp, files, ca_path, names, "m0", {}, links=LINKS), tmp / "m0.log")
        m0_at = procs["m0"].address
        assert m0_at is not None
        for n in ("m1", "m2"):
            procs[n] = await Member.start(n, _config(tmp, files, ca_path, names, n, {"m0": m0_at}, links=LINKS), tmp / f"{n}.log")
        for m in procs.values():
            await m.wait_for(lambda e: e["event"] == "established", ESTABLISH)
        m0, m1, m2 = procs["m0"], procs["m1"], procs["m2"]

        m0.command(cmd="send", group="room", count=BULK, size=SIZE)
        await m1.wait_for(lambda e: e["event"] == "delivered" and e["sender"] == "m0" and e["seq"] >= PAUSE_AT, 60)
        _signal(m1, signal.SIGSTOP)
        stopped.add("m1")
        t_stop = time.monotonic()
        await m0.wait_for(lambda e: e["event"] == "delivered" and e["sender"] == "m0" and e["seq"] >= CONTINUE_AT, 60)
        _signal(m1, signal.SIGCONT)
        stopped.discard("m1")
        t_cont = time.monotonic()
        # m0's events come in order: once it answered a command sent after SIGCONT, every
        # message it had multicast by then is among its events (what it reported before the
        # signal lags behind what it sent: that is no bound)
        await m0.stats()
        sent_before = max(_seqs(m0, "m0"))  # m0 had sent at most this much when m1 went on
        await m0.wait_for(lambda e: e["event"] in ("sent", "error"), 120)
        assert m0.of("sent"), m0.of("error")
        t_sent = time.monotonic()

        def accounted(m: Member) -> int:
            return len(set(_seqs(m, "m0"))) + sum(b - a for a, b in _lost(m, "m0"))

        def last(e: dict) -> bool:  # FIFO: the last message, delivered or reported lost, comes last
            return (e["event"] == "delivered" and e["sender"] == "m0" and e["seq"] == BULK - 1) or (
                e["event"] == "lost" and e["sender"] == "m0" and e["end"] == BULK
            )

        for m in (m1, m2):  # every message delivered or reported lost
            try:
                await m.wait_for(last, 90)
            except TimeoutError:
                seqs = _seqs(m, "m0")
                print(f"{m.name}: {len(seqs)} delivered (last {seqs[-3:]}), lost {_lost(m, 'm0')}, "
                      f"stack {(await m.stats())['stack']}")
                raise
        t_done = time.monotonic()
        await asyncio.sleep(1.0)  # a duplicate or a late report would show now
        assert accounted(m1) == accounted(m2) == BULK
        seqs, lost = _seqs(m1, "m0"), _lost(m1, "m0")
        stats = await m0.stats()
        resent, dropped = stats["stack"].get("smc.resent", 0), stats["links"].get("frames_dropped_queue_full", 0)
        m1_stack = (await m1.stats())["stack"]
        lost_seqs = {s for a, b in lost for s in range(a, b)}
        first_lost_after = min((s for s in lost_seqs if s > sent_before), default=None)
        print(
            f"paused reader: m1 stopped {t_cont - t_stop:.1f}s during {BULK} x {SIZE} B (m0 at seq {sent_before} "
            f"when it went on); links tail-dropped {dropped} frames, {resent} resent from the store; m1 delivered "
            f"{len(seqs)}, lost {len(lost_seqs)} in {lost} (gaps given up: {m1_stack.get('smc.gap_skipped', 0)}); "
            f"first lost seq above {sent_before}: {first_lost_after}; bulk ended {t_sent - t_cont:.1f}s after "
            f"SIGCONT, all accounted {t_done - t_sent:.1f}s after that; test {time.monotonic() - t_start:.0f}s"
        )
        assert dropped > 0, "m1's link queue must have tail-dropped: that is the case under test"
        assert seqs == sorted(set(seqs)), "exactly once, in per-sender order"
        assert not lost_seqs & set(seqs) and set(seqs) | lost_seqs == set(range(BULK))
        assert _seqs(m2, "m0") == list(range(BULK)) and not m2.of("lost"), "the member that ran got everything"
        later = set(range(sent_before + 1, BULK))
        assert later <= set(seqs), f"{len(later - set(seqs))} messages sent after m1 went on did not reach it"
    finally:
        await _stop_all(tmp, procs, stopped)


def test_a_reader_paused_during_a_bulk_send_receives_every_later_message(tmp_path):
    asyncio.run(asyncio.wait_for(_paused_during_bulk(tmp_path), 400))
