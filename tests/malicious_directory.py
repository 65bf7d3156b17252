"""A malicious directory for the tests: a proxy of our own in front of the real directory server.

Run as its own process (``python -m tests.malicious_directory --upstream URL --fd N``) on a
listening socket the test bound (no fixed port).  It forwards every request to the honest
server and passes the answers back -- except where a *rule* says otherwise.  Rules are keyed by
the caller, which the proxy reads from the signed request's ``x-secchat-name`` header (clients
sign every request), so one client can be served something else than another: a deleted or an
older record, another creator's record under the same id, an answer trickling at one byte per
second, a listing flood, an error message full of escape sequences.

The test drives it over HTTP, under ``/__evil/`` (no signature: it is the attacker's own
console):

* ``PUT /__evil/rules`` -- a JSON list of :class:`Rule` objects, replacing all rules; the first
  rule that matches a request decides;
* ``GET /__evil/log`` -- the requests seen (caller, method, path, x-secchat-* headers, body as
  base64), the last :data:`LOG_SIZE`, to replay one elsewhere.

Adding a case is adding a rule.  A split view, say, is two ``replace`` rules on the same path
for two callers, each with its own genuinely signed record (member order).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

LOG_SIZE = 200
_FORWARDED = ("content-type", "x-secchat-")


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    """What to do with the requests it matches (every field given must match).

    ``action``:

    * ``"replace"`` -- answer ``status`` with ``json`` (encoded here) instead of asking upstream;
    * ``"trickle"`` -- ask upstream, then send its answer ``rate`` bytes per second, padded with
      JSON whitespace to ``pad`` bytes (so that it takes long);
    * ``"flood"`` -- a listing of ``count`` made-up entries per page (``kind`` ``participants``
      or ``conferences``), ``pages`` pages, then an empty one.
    """

    action: str
    caller: str | None = None
    method: str | None = None
    path: str | None = None
    prefix: str | None = None
    status: int = 200
    json: Any = None
    rate: float = 1.0
    pad: int = 4096
    kind: str = "participants"
    count: int = 1000
    pages: int = 100

    def matches(self, caller: str | None, method: str, path: str) -> bool:
        return (
            (self.caller is None or self.caller == caller)
            and (self.method is None or self.method == method)
            and (self.path is None or self.path == path)
            and (self.prefix is None or path.startswith(self.prefix))
        )


def _flood_entry(kind: str, index: int) -> dict[str, Any]:
    # Each made-up certificate is different, so no cache spares the client its check.
    pem = f"-----BEGIN CERTIFICATE-----\nZmxvb2Q{index:09d}\n-----END CERTIFICATE-----\n"
    if kind == "participants":
        return {"name": f"flood{index:07d}", "issuer": "Test CA", "fingerprint": "00" * 32,
                "cert_pem": pem, "registered_at": 1}
    return {"id": f"flood{index:07d}", "t0": 1, "t1": 2, "members": ["flood"], "certs": [pem],
            "creator": "flood", "signature": "00" * 64, "version": 1, "created_at": 1}


def _flood_page(rule: Rule, request: Request) -> list[dict[str, Any]]:
    after = parse_qs(request.url.query).get("after", [""])[0]
    key = after.rpartition("/")[2] if rule.kind == "conferences" else after
    start = int(key[5:]) + 1 if key.startswith("flood") and key[5:].isdigit() else 0
    if start >= rule.count * rule.pages:
        return []
    return [_flood_entry(rule.kind, i) for i in range(start, start + rule.count)]


def create_app(upstream: str) -> Starlette:
    rules: list[Rule] = []
    log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
    http = httpx.AsyncClient(base_url=upstream, timeout=30)

    async def set_rules(request: Request) -> Response:
        rules[:] = msgspec.json.decode(await request.body(), type=list[Rule])
        return Response(status_code=204)

    async def get_log(_request: Request) -> Response:
        return Response(json.dumps(list(log)), media_type="application/json")

    async def forward(request: Request, body: bytes) -> tuple[int, bytes, str]:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        query = request.scope.get("query_string") or b""
        target = (raw + (b"?" + query if query else b"")).decode("latin-1")
        headers = {k: v for k, v in request.headers.items() if k.startswith(_FORWARDED)}
        answer = await http.request(request.method, target, content=body, headers=headers)
        return answer.status_code, answer.content, answer.headers.get("content-type", "application/json")

    async def proxy(request: Request) -> Response:
        body = await request.body()
        caller = request.headers.get("x-secchat-name")
        caller = unquote(caller) if caller is not None else None
        path = request.url.path
        log.append({
            "caller": caller, "method": request.method, "path": path, "query": request.url.query,
            "headers": {k: v for k, v in request.headers.items() if k.startswith("x-secchat-")},
            "body": base64.b64encode(body).decode("ascii"),
        })
        rule = next((r for r in rules if r.matches(caller, request.method, path)), None)
        if rule is None:
            status, content, media = await forward(request, body)
            return Response(content, status_code=status, media_type=media)
        if rule.action == "replace":
            return Response(json.dumps(rule.json).encode(), status_code=rule.status, media_type="application/json")
        if rule.action == "flood":
            return Response(json.dumps(_flood_page(rule, request)).encode(), media_type="application/json")
        if rule.action == "trickle":
            status, content, media = await forward(request, body)
            content += b" " * max(0, rule.pad - len(content))

            async def slowly() -> AsyncIterator[bytes]:
                for i in range(len(content)):
                    yield content[i : i + 1]
                    await asyncio.sleep(1 / rule.rate)

            return StreamingResponse(slowly(), status_code=status, media_type=media)
        return Response(f"unknown action {rule.action!r}", status_code=500)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(routes=[
        Route("/__evil/rules", set_rules, methods=["PUT"]),
        Route("/__evil/log", get_log, methods=["GET"]),
        Route("/{path:path}", proxy, methods=methods),
    ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(create_app(args.upstream), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
