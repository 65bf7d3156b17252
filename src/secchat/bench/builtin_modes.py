"""SecChat's own message modes (signed, burst, pairwise, group) and the thesis's suite, for Figure 2.

Each SecChat mode runs the whole member stack: ``Member.multicast`` to frame bytes, and
``Member.receive`` of those bytes to ``Delivered``.  The thesis's suite is RSA (1024, the least
``cryptography`` allows; the thesis used 512) + AES-128-CBC, or HMAC-MD5 under a group key.
"""

from __future__ import annotations

from ..protocols.events import Delivered
from ..protocols.stack import Member, smc_tag
from .modes import MessageMode, Receive, Send, register

TAG = smc_tag("sim")


def established_pair(auth: str) -> tuple[Member, Member]:
    """Two members of a three-member group that hold the key (deterministic simulator)."""
    from ..sim.simulator import Simulation

    sim = Simulation(3, 1)
    for i in range(3):
        sim.start(i, lambda m, now: m.smc_init(TAG, now, auth=auth))
    sim.run(5.0)
    a, b = sim.nodes[0].member, sim.nodes[1].member
    assert a is not None and b is not None
    if not (a.smc(TAG).established and b.smc(TAG).established):  # type: ignore[union-attr]
        raise RuntimeError("the benchmark group did not establish its key")
    a.take_outgoing()
    a.take_events()
    return a, b


def _stack(auth: str):
    def prepare(payload: bytes) -> tuple[Send, Receive]:
        sender, receiver = established_pair(auth)

        def send() -> bytes:
            sender.multicast(TAG, payload, 1.0)
            frame = sender.take_outgoing()[-1].data
            sender.take_events()
            return frame

        def receive(frame: bytes) -> None:
            receiver.receive(0, frame, 1.0)
            events = receiver.take_events()
            receiver.take_outgoing()
            if not events or not isinstance(events[-1], Delivered):
                raise RuntimeError("frame not delivered")

        return send, receive

    return prepare


def _thesis(signed: bool):
    def prepare(payload: bytes) -> tuple[Send, Receive]:
        from ..crypto_legacy import LegacySuite

        suite = LegacySuite()
        if signed:
            sig_len = len(suite.sign(b""))

            def send() -> bytes:
                return suite.encrypt(payload + suite.sign(payload))

            def receive(frame: bytes) -> None:
                plain = suite.decrypt(frame)
                suite.verify(plain[:-sig_len], plain[-sig_len:])

            return send, receive

        def send_mac() -> bytes:
            ct = suite.encrypt(payload)
            return suite.mac(ct) + ct

        def receive_mac(frame: bytes) -> None:
            if not suite.check_mac(frame[16:], frame[:16]):
                raise RuntimeError("bad MAC")
            suite.decrypt(frame[16:])

        return send_mac, receive_mac

    return prepare


register(MessageMode("signed", "SecChat signed (Ed25519 + AES-256-GCM)", _stack("signed")))
register(MessageMode("burst", "SecChat burst, isolated message (Merkle root signed)", _stack("burst")))
register(MessageMode("pairwise", "SecChat pairwise MACs (n = 3)", _stack("pairwise")))
register(MessageMode("group", "SecChat group (AES-256-GCM)", _stack("group")))
register(MessageMode("thesis-signed", "thesis: RSA-1024 + AES-128-CBC", _thesis(True), family="thesis"))
register(MessageMode("thesis-group", "thesis: HMAC-MD5 + AES-128-CBC", _thesis(False), family="thesis"))
