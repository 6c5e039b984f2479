"""The official TypeScript SDK's OAuth client signs in through the gateway: discovery, a Client ID Metadata
Document served over HTTPS (trusted through NODE_EXTRA_CA_CERTS), the real IdP in Chromium, the code, tokens,
tools, and a refresh that rotates."""

from __future__ import annotations

import json
import os
import shutil

import anyio
import pytest

from tests.login.support import ROOT, authorize_in_browser, browser, sign_in_world

pytestmark = pytest.mark.anyio


async def test_the_typescript_sdk_signs_in_with_a_metadata_document_and_calls_tools(tmp_path):
    node = shutil.which("node")
    assert node
    async with sign_in_world(tmp_path) as world, browser() as chromium:
        client_id = world.docs.add("/ts/client.json", [world.redirect_uri], name="TS IDE")
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(tmp_path / "cimd-cert.pem")}
        process = await anyio.open_process(
            [node, str(ROOT / "tests" / "login" / "ts_sign_in.mjs"), world.gw.mcp_url, client_id, world.redirect_uri],
            env=env,
            cwd=ROOT,
        )
        assert process.stdout is not None and process.stdin is not None
        output = b""
        try:
            with anyio.fail_after(60):
                while b"\n" not in output.partition(b"AUTHORIZE ")[2]:  # the whole line the SDK printed
                    output += await process.stdout.receive()
                url = output.split(b"AUTHORIZE ", 1)[1].split(b"\n", 1)[0].decode()
                landing = await authorize_in_browser(chromium, url, world.callbacks)
                assert landing.params["iss"] == world.gw.url
                await process.stdin.send(landing.params["code"].encode() + b"\n")
                async for chunk in process.stdout:
                    output += chunk
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, output[-2000:]
        answer = json.loads(output.strip().splitlines()[-1])
        assert answer["tools"] == ["time__convert_time", "time__get_current_time"] and answer["isError"] is False
        assert answer["refreshed"]["refresh_token"] != answer["refresh_token"]
        claims = world.gw.gateway.tokens.verify(answer["refreshed"]["access_token"]).raw
        assert claims["act"] == {"sub": "ide:alice@example.com:127.0.0.1"} and claims["sub"] == "alice@example.com"
        call = world.gw.audit("tool.call")[-1]
        assert (call["agent"], call["on_behalf_of"]) == ("ide:alice@example.com:127.0.0.1", "alice@example.com")
        assert world.gw.audit("token.refreshed")[-1]["session"] == call["session"]
