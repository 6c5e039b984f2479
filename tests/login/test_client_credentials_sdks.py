"""The official SDKs' built-in client-credentials providers work against the gateway as they are: the
complete RFC 8414 metadata (authorization_endpoint included) is what their schemas require."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import anyio
import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.identity.support import give_secret
from tests.login.support import ROOT
from tests.login.test_python_sdk import Memory
from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio


async def test_the_python_sdks_client_credentials_provider_gets_a_token_and_calls_tools(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        provider = ClientCredentialsOAuthProvider(gw.mcp_url, Memory(), "alice-bot", secret)
        http = create_mcp_http_client(auth=provider)
        async with http, Client(streamable_http_client(gw.mcp_url, http_client=http)) as client:
            result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error
        assert gw.audit("tool.call")[-1]["agent"] == "alice-bot"


async def test_the_typescript_sdks_client_credentials_provider_gets_a_token_and_calls_tools(tmp_path):
    node = shutil.which("node")
    assert node and (ROOT / "node_modules" / "@modelcontextprotocol" / "sdk").exists(), "npm ci installs the TS SDK"
    script = ROOT / "tests" / "login" / "ts_client_credentials.mjs"
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        secret = await give_secret(gw, "alice-bot")
        run = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [node, str(script), gw.mcp_url, "alice-bot", secret],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
                env={**os.environ},
            )
        )
        assert run.returncode == 0, run.stderr[-2000:]
        answer = json.loads(run.stdout.strip().splitlines()[-1])
        assert answer == {"tools": ["time__convert_time", "time__get_current_time"], "isError": False}
        assert gw.audit("tool.call")[-1]["agent"] == "alice-bot"
