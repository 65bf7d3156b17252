"""SecChat over real networks: the thesis's PT2PTLink (§4.2) and a process per member.

Layers, bottom to top:

* :mod:`.errors` -- the :class:`LinkError` family; foreign exceptions are translated at the edge.
* :mod:`.framing` -- 4-byte length-prefixed frames and the link envelope (``Hello``, ``Data``).
* :mod:`.tls` -- TLS 1.3 mutual-authentication contexts and certificate pinning.
* :mod:`.channel` -- the per-peer reliable channel, no I/O: frames numbered and acknowledged,
  resent on a new connection, so nothing is lost or duplicated across reconnections.
* :mod:`.links` -- one TLS port per member, connect on demand, retry/backoff, fairness under
  floods; drives a channel per peer over its connections.
* :mod:`.runtime` -- the asyncio driver of sans-I/O ``Member`` stacks (timers via ``call_at``).
* :mod:`.node` -- one identity: its links, the runtime and a stack per conference (the app's API).
* :mod:`.config` / :mod:`.member_process` -- a member as an OS process from a TOML file,
  JSON lines on stdout (events) and stdin (commands).
* :mod:`.cluster` -- ``secchat cluster``: n member processes on loopback, scenarios, checks.
* :mod:`.provision` -- a CA and member identities for the launcher and the tests.
"""
