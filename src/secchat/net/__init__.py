"""SecChat over real networks: the thesis's PT2PTLink (§4.2) and a process per member.

Layers, bottom to top:

* :mod:`.errors` -- the :class:`LinkError` family; foreign exceptions are translated at the edge.
* :mod:`.framing` -- 4-byte length-prefixed frames and the link envelope (``Hello``, ``Data``).
* :mod:`.tls` -- TLS 1.3 mutual-authentication contexts and certificate pinning.
* :mod:`.links` -- one TLS port per member, connect on demand, bounded queues, retry/backoff,
  frames numbered and acknowledged so nothing is lost or duplicated across reconnections.
* :mod:`.runtime` -- the asyncio driver of sans-I/O ``Member`` stacks (timers via ``call_at``).
* :mod:`.node` -- one identity: its links, the runtime and a stack per conference (the app's API).
* :mod:`.config` / :mod:`.member_process` -- a member as an OS process from a TOML file,
  JSON lines on stdout (events) and stdin (commands).
* :mod:`.cluster` -- ``secchat cluster``: n member processes on loopback, scenarios, checks.
* :mod:`.provision` -- a CA and member identities for the launcher and the tests.
"""
