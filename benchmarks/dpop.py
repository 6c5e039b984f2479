"""What DPoP proof verification costs per call (RFC 9449 sender-constrained tokens).

    .venv/bin/python benchmarks/dpop.py [--proofs 500] [--calls 300] [--postgres URL]

Three figures. (1) The pure checks of one proof (header, signature, htm, htu, iat,
ath, thumbprint) for each key type a client may use, in process. (2) The same plus
spending its jti in a real SQLite store, and with --postgres in PostgreSQL (what the
replica-shared single-use check costs). (3) End to end: the gateway as its own process, the official SDK client
making sequential echo calls through /servers/everything/mcp with a plain Bearer
token and then with a DPoP-bound token and a fresh proof per request: p50 latency
and the gateway process's own CPU time per call (the client's signing cost is
excluded from the CPU figure, included in the latency).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import jwt
import psutil
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.upstream.http_client import mcp_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead

from gateway.identity.dpop import DpopVerifier, check_proof

URL = "http://127.0.0.1:1/mcp"


class Key:
    def __init__(self, alg: str) -> None:
        self.alg = alg
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(65537, 2048)
            self.jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))

    def proof(self, method: str, url: str, token: str) -> str:
        ath = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
        claims = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time()), "ath": ath}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"typ": "dpop+jwt", "jwk": self.jwk})


def micro(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for alg in ("ES256", "EdDSA", "RS256"):
        key = Key(alg)
        proofs = [key.proof("POST", URL, "token") for _ in range(n)]
        start = time.perf_counter()
        for proof in proofs:
            check_proof(proof, method="POST", url=URL, now=time.time(), access_token="token")
        out[f"check_{alg}_us"] = round((time.perf_counter() - start) / n * 1e6, 1)
    return out


async def _verify_all(store: Any, n: int) -> float:
    """Microseconds per verified and spent proof."""
    await store.open()
    try:
        verifier = DpopVerifier(store, time.time, "optional")
        key = Key("ES256")
        proofs = [key.proof("POST", URL, "token") for _ in range(n)]
        start = time.perf_counter()
        for proof in proofs:
            await verifier.verify(proof, method="POST", url=URL, access_token="token")
        return round((time.perf_counter() - start) / n * 1e6, 1)
    finally:
        await store.close()


async def with_store(n: int, postgres: str | None) -> dict[str, Any]:
    from gateway.store.sqlite import SQLiteStore

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["verify_ES256_sqlite_us"] = await _verify_all(SQLiteStore(Path(tmp) / "gateway.db"), n)
    if postgres:  # a throwaway database on that server
        import asyncpg

        from gateway.store.postgres import PostgresStore

        name = f"bench_dpop_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(f"{postgres}/postgres")
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            out["verify_ES256_postgres_us"] = await _verify_all(PostgresStore(f"{postgres}/{name}"), n)
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            await admin.close()
    return out


class DpopAuth(httpx2.Auth):
    def __init__(self, key: Key, token: str) -> None:
        self.key, self.token = key, token

    def auth_flow(self, request: httpx2.Request) -> Any:
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = self.key.proof(request.method, str(request.url.copy_with(query=None)), self.token)
        yield request


def connector(url: str, **client: Any) -> Callable[[], Any]:
    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        async with mcp_http_client(**client) as http:
            async with Client(streamable_http_client(url, http_client=http), cache=None) as session:
                yield overhead.echo(session)

    return connect


async def end_to_end(calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = overhead.free_port()
        config = overhead.write_config(Path(tmp), port)
        process = overhead.start_gateway(config, None)
        try:
            base = f"http://127.0.0.1:{port}"
            overhead.wait_ready(base, process)
            secret = subprocess.run(
                [sys.executable, "-m", "gateway", "agents", "rotate", "bench-bot", "--config", str(config)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            key = Key("ES256")
            response = httpx.post(
                f"{base}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("bench-bot", secret),
                headers={"DPoP": key.proof("POST", f"{base}/oauth/token", "")},
                timeout=10,
            )
            response.raise_for_status()
            bound = response.json()["access_token"]
            bearer = overhead.open_session(config)
            url = f"{base}/servers/everything/mcp"
            server = psutil.Process(process.pid)
            for label, connect in (
                ("bearer", connector(url, headers={"Authorization": f"Bearer {bearer}"})),
                ("dpop", connector(url, auth=DpopAuth(key, bound))),
            ):
                async with connect() as call:
                    samples = await overhead.sequential(call, calls)  # after its own warm-up
                    before = server.cpu_times()
                    for _ in range(calls):
                        await call()
                    after = server.cpu_times()
                used = (after.user - before.user) + (after.system - before.system)
                out[f"{label}_p50_ms"] = round(statistics.median(samples), 2)
                out[f"{label}_cpu_ms_per_call"] = round(used / calls * 1000, 3)
        finally:
            process.terminate()
            process.wait(10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proofs", type=int, default=500)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also spend jtis on this server, e.g. "
        "postgresql://postgres@127.0.0.1:5432 (a throwaway database is created and dropped)",
    )
    args = parser.parse_args()
    results = {
        **micro(args.proofs),
        **anyio.run(with_store, args.proofs, args.postgres),
        **anyio.run(end_to_end, args.calls),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
