"""Directory throughput: requests/s for get-conference and create-conference, SQLite vs PostgreSQL.

Starts a real ``secchat directory serve`` process per backend (on an inherited socket bound to
port 0), registers 50 participants, then runs closed-loop asyncio clients (1, 10, 50 at once) for
a fixed time per round and prints the median of the rounds as a table, then the raw data as CSV.
Requests are made with plain httpx (signed with the directory's own scheme), so the numbers
measure the server and its database, not the client's verification.

    python benchmarks/bench_directory.py [--rounds 3] [--seconds 1.5] [--pg URL | --no-pg]

PostgreSQL runs in a fresh schema of database ``test`` at 127.0.0.1:5432 (dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secchat import pki  # noqa: E402
from secchat.directory.auth import authority_of, sign_request  # noqa: E402
from secchat.directory.models import ConferenceRecord  # noqa: E402

N_USERS = 50
MEMBERS = 5
CONCURRENCY = (1, 10, 50)


class Server:
    def __init__(self, ca_pem: Path, db: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.sock.set_inheritable(True)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "secchat.directory", "serve", "--ca", str(ca_pem), "--db", db,
             "--fd", str(self.sock.fileno())],
            env=env, pass_fds=(self.sock.fileno(),), stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("the directory server exited")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise SystemExit("the directory server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.sock.close()


class Users:
    def __init__(self) -> None:
        self.ca_key, self.ca_cert = pki.create_ca("Bench CA")
        self.keys, self.certs, self.signers, self.fps, self.pems = [], [], [], [], []
        self.directory = ""  # the URL of the directory the requests are for (set once it runs)
        for i in range(N_USERS):
            key = pki.generate_key()
            cert = pki.issue_certificate(self.ca_key, self.ca_cert, f"u{i:02d}", key.public_key())
            self.keys.append(key)
            self.certs.append(cert)
            self.signers.append(pki.signer_of(key))
            self.fps.append(pki.fingerprint(cert))
            self.pems.append(pki.cert_to_pem(cert).decode())

    def headers(self, i: int, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign_request(self.signers[i], f"u{i:02d}", authority_of(self.directory), method, path, body,
                            timestamp=int(time.time()), nonce=os.urandom(16).hex())

    def conference(self, i: int, conf_id: str) -> bytes:
        idx = [(i + k) % N_USERS for k in range(MEMBERS)]
        names = tuple(f"u{j:02d}" for j in idx)
        record = ConferenceRecord(conf_id, 100, 200, names, tuple(self.fps[j] for j in idx), names[0], 1, 50)
        return json.dumps({
            "id": conf_id, "t0": 100, "t1": 200, "members": list(names),
            "certs": [self.pems[j] for j in idx], "creator": names[0], "version": 1, "created_at": 50,
            "signature": self.signers[i].sign(record.signed_bytes()).hex(),
        }).encode()


async def setup(url: str, users: Users, n_confs: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i in range(N_USERS):
            body = json.dumps({"cert_pem": users.pems[i]}).encode()
            r = await http.post("/v1/participants", content=body,
                                headers=users.headers(i, "POST", "/v1/participants", body))
            assert r.status_code in (200, 201), r.text
        ids = []
        for k in range(n_confs):
            cid = f"seed-{k}"
            body = users.conference(k % N_USERS, cid)
            r = await http.post("/v1/conferences", content=body,
                                headers=users.headers(k % N_USERS, "POST", "/v1/conferences", body))
            assert r.status_code == 201, r.text
            ids.append(f"u{k % N_USERS:02d}/{cid}")  # conferences are (creator, id)
    return ids


async def run_round(https: list[httpx.AsyncClient], users: Users, op: str, clients: int, seconds: float,
                    tag: str, ids: list[str]) -> float:
    """``clients`` closed-loop workers, each on its own connection, for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        k = 0
        while time.perf_counter() < deadline:
            await one(w, k, https[w])
            k += 1
            done += 1

    async def one(w: int, k: int, http: httpx.AsyncClient) -> None:
        if op == "get":
            r = await http.get(f"/v1/conferences/{ids[(w * 7 + k) % len(ids)]}")
            assert r.status_code == 200, r.text
        else:
            i = (w + k) % N_USERS
            body = users.conference(i, f"{tag}-{w}-{k}")
            r = await http.post("/v1/conferences", content=body,
                                headers=users.headers(i, "POST", "/v1/conferences", body))
            assert r.status_code == 201, r.text

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.perf_counter() - start
    return done / elapsed


async def measure(url: str, users: Users, ids: list[str], backend: str, args) -> list[tuple]:
    # clients are made once, outside the timed rounds (an httpx client loads a TLS context)
    https = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(max(CONCURRENCY))]
    rows = []
    try:
        for op in ("get", "create"):
            for clients in CONCURRENCY:
                for r in range(args.rounds):
                    rate = await run_round(https, users, op, clients, args.seconds, f"{op}{clients}r{r}", ids)
                    rows.append((backend, op, clients, r, rate))
                    print(f"# {backend:10} {op:6} c={clients:<3} round {r}: {rate:8.1f} req/s", file=sys.stderr)
    finally:
        for http in https:
            await http.aclose()
    return rows


def pg_schema_url(base: str) -> tuple[str, str]:
    import psycopg

    schema = f"secchat_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql"), autocommit=True, connect_timeout=3) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}"


def drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    users = Users()
    rows: list[tuple[str, str, int, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ca_pem = Path(tmp) / "ca.pem"
        ca_pem.write_bytes(pki.cert_to_pem(users.ca_cert))
        backends = [("sqlite", f"sqlite:///{tmp}/bench.sqlite3", None)]
        if not args.no_pg:
            try:
                schema, url = pg_schema_url(args.pg)
                backends.append(("postgresql", url, schema))
            except Exception as exc:  # the benchmark still runs on SQLite
                print(f"# PostgreSQL skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        for backend, url, schema in backends:
            server = Server(ca_pem, url)
            try:
                users.directory = server.url  # what the requests are signed for
                ids = asyncio.run(setup(server.url, users, 200))
                rows += asyncio.run(measure(server.url, users, ids, backend, args))
            finally:
                server.close()
                if schema:
                    drop_schema(args.pg, schema)

    print(f"Directory requests/s, median of {args.rounds} rounds of {args.seconds}s "
          f"({os.cpu_count()} CPUs; one server process; clients in one asyncio process)")
    header = f"{'backend':<11} {'operation':<18} " + " ".join(f"{'c=' + str(c):>9}" for c in CONCURRENCY)
    print(header)
    print("-" * len(header))
    for backend in dict.fromkeys(r[0] for r in rows):
        for op, label in (("get", "get-conference"), ("create", "create-conference")):
            medians = [statistics.median(x[4] for x in rows if x[0] == backend and x[1] == op and x[2] == c)
                       for c in CONCURRENCY]
            print(f"{backend:<11} {label:<18} " + " ".join(f"{m:9.1f}" for m in medians))
    print()
    print("backend,operation,clients,round,requests_per_second")
    for backend, op, clients, r, rate in rows:
        print(f"{backend},{'get-conference' if op == 'get' else 'create-conference'},{clients},{r},{rate:.1f}")


if __name__ == "__main__":
    main()
