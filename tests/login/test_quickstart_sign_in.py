"""The quickstart as a new user meets it: run.sh starts the demo IdP beside the gateway and prints the
password; a client without a metadata document (dynamic registration, as Claude Code and Cursor do) signs in
as alice with the official Python SDK, in Chromium, and calls a tool as its own agent."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import anyio
import pytest
import yaml
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.login.support import Landing, authorize_in_browser, browser, callback_server
from tests.login.test_python_sdk import Memory
from tests.test_quickstart import READY, _Run

pytestmark = pytest.mark.anyio


async def test_a_new_user_signs_in_to_the_quickstart_as_alice_with_a_registered_client(quickstart: Path):
    config = yaml.safe_load((quickstart / "gateway.yaml").read_text())
    run = _Run(quickstart)
    try:
        banner = "".join(await anyio.to_thread.run_sync(run.wait_for, READY))
        password = re.search(r"password\s+(\S+)", banner)
        assert password, banner
        url = f"{config['public_url']}/mcp"
        async with browser() as chromium, callback_server() as callbacks:
            redirect = f"http://127.0.0.1:{callbacks.port}/callback"
            landings: list[Landing] = []

            async def redirect_handler(authorization_url: str) -> None:
                landings.append(
                    await authorize_in_browser(chromium, authorization_url, callbacks, password=password.group(1))
                )

            async def callback_handler() -> AuthorizationCodeResult:
                params = landings[-1].params
                return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

            metadata = OAuthClientMetadata(
                redirect_uris=[redirect],
                client_name="A CLI",
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            )
            storage = Memory()
            http = create_mcp_http_client(
                auth=OAuthClientProvider(url, metadata, storage, redirect_handler, callback_handler)
            )
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
                assert not result.is_error
        assert storage.client_info is not None and storage.client_info.client_id.startswith("dcr-")
        records = (quickstart / ".state" / "audit.jsonl").read_text()
        assert f'"agent":"ide:alice@example.com:{storage.client_info.client_id}"' in records
    finally:
        run.process.send_signal(signal.SIGINT)
        await anyio.to_thread.run_sync(lambda: run.process.wait(timeout=60))
