"""Everything an agent may use passes through intact: against the real server-everything, both eras."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import Harness, dynamic_manifest, everything_stdio_manifest, running_gateway

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["legacy", "auto"])
AGENTS = {
    "full-bot": {
        "owner": "ops@example.com",
        "grant": {"tools": ["everything.*", "dynamic.*"], "resources": ["everything"], "prompts": ["everything"]},
    },
}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    manifests = [everything_stdio_manifest(isolation="per_session"), dynamic_manifest()]
    async with running_gateway(tmp_path_factory.mktemp("passthrough"), manifests=manifests, agents=AGENTS) as gw:
        yield gw


@pytest.fixture
async def token(gw: Harness) -> str:
    return await gw.open_session("full-bot", task="pass-through")


async def sampled(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    asked = params.messages[0].content
    return types.CreateMessageResult(
        role="assistant",
        model="test-model",
        content=types.TextContent(type="text", text=f"sampled reply to: {getattr(asked, 'text', '')}"),
    )


async def elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})


@MODES
async def test_every_content_type_arrives_intact(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode) as client:
        text = await client.call_tool("everything__echo", {"message": "hello"})
        assert text.content == [types.TextContent(type="text", text="Echo: hello")]

        image = await client.call_tool("everything__get-tiny-image", {})
        images = [c for c in image.content if isinstance(c, types.ImageContent)]
        assert images and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG")

        embedded = await client.call_tool(
            "everything__get-resource-reference", {"resourceType": "Text", "resourceId": 3}
        )
        resources = [c for c in embedded.content if isinstance(c, types.EmbeddedResource)]
        assert resources and resources[0].resource.uri == "everything+demo://resource/dynamic/text/3"

        structured = await client.call_tool("everything__get-structured-content", {"location": "Chicago"})
        assert structured.structured_content is not None and "temperature" in structured.structured_content

        links = await client.call_tool("everything__get-resource-links", {"count": 2})
        uris = [c.uri for c in links.content if isinstance(c, types.ResourceLink)]
        assert len(uris) == 2 and all(u.startswith("everything+demo://") for u in uris)

        audio = await client.call_tool("dynamic__speak", {})
        clips = [c for c in audio.content if isinstance(c, types.AudioContent)]
        assert clips and clips[0].mime_type == "audio/wav"
        assert base64.b64decode(clips[0].data).startswith(b"RIFF")


@MODES
async def test_resources_list_read_and_templates_use_namespaced_uris(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode) as client:
        listed = await client.list_resources()
        uris = [r.uri for r in listed.resources]
        assert uris and all(u.startswith("everything+demo://") for u in uris)
        text = next(u for u in uris if u.endswith(".md"))
        read = await client.read_resource(text)
        assert read.contents[0].uri == text
        assert isinstance(read.contents[0], types.TextResourceContents) and read.contents[0].text

        templates = await client.list_resource_templates()
        assert "everything+demo://resource/dynamic/text/{resourceId}" in [
            t.uri_template for t in templates.resource_templates
        ]
        blob = await client.read_resource("everything+demo://resource/dynamic/blob/2")
        assert isinstance(blob.contents[0], types.BlobResourceContents)


@MODES
async def test_a_server_endpoint_keeps_original_names(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode, url=gw.server_url("everything")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "echo" in tools and not any("__" in t for t in tools)
        assert (await client.call_tool("echo", {"message": "direct"})).content[0].text == "Echo: direct"
        uris = [r.uri for r in (await client.list_resources()).resources]
        assert uris and all(u.startswith("demo://") for u in uris)
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        assert "simple-prompt" in prompts


@MODES
async def test_prompts_and_completion_pass_through(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode) as client:
        names = [p.name for p in (await client.list_prompts()).prompts]
        assert {"everything__simple-prompt", "everything__args-prompt", "everything__completable-prompt"} <= set(names)
        prompt = await client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
        assert "Paris" in str(prompt.messages[0].content)
        completion = await client.session.complete(
            types.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
            {"name": "department", "value": "Eng"},
        )
        assert completion.completion.values == ["Engineering"]
        by_template = await client.session.complete(
            types.ResourceTemplateReference(
                type="ref/resource", uri="everything+demo://resource/dynamic/text/{resourceId}"
            ),
            {"name": "resourceId", "value": "1"},
        )
        assert "1" in by_template.completion.values


@MODES
async def test_progress_reaches_the_caller_with_its_own_token(gw: Harness, token: str, mode: str) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with gw.client(token, mode=mode) as client:
        result = await client.session.call_tool(
            "everything__trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
        )
    assert "completed" in result.content[0].text
    assert seen == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]


@MODES
async def test_sampling_and_elicitation_reach_the_calling_agent(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode, sampling_callback=sampled, elicitation_callback=elicited) as client:
        result = await client.call_tool("everything__trigger-sampling-request", {"prompt": "ping", "maxTokens": 8})
        assert "sampled reply to: Resource trigger-sampling-request context: ping" in result.content[0].text
        result = await client.call_tool("everything__trigger-elicitation-request", {})
        assert "Ada Lovelace" in str(result.content)
    records = [r for r in gw.audit("sampling.request") if r["session"] == gw.gateway.tokens.verify(token).sid]
    assert records and records[-1]["request_tokens"] > 0 and records[-1]["response_tokens"] > 0


async def test_logging_reaches_the_agent_that_turned_it_on(gw: Harness, token: str) -> None:
    got = anyio.Event()
    lines: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        lines.append(params)
        got.set()

    async with gw.client(token, mode="legacy", logging_callback=on_log) as client:
        await client.session.set_logging_level("debug")
        await client.call_tool("everything__toggle-simulated-logging", {})
        with anyio.fail_after(10):
            await got.wait()
        await client.call_tool("everything__toggle-simulated-logging", {})
    assert "message" in str(lines[0].data).lower()


async def test_modern_logging_is_delivered_when_the_request_opts_in(gw: Harness, token: str) -> None:
    lines: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        lines.append(params)

    async with gw.client(token, mode="auto", logging_callback=on_log, log_level="debug") as client:
        await client.call_tool("everything__toggle-simulated-logging", {})  # logs once, during this call
        await client.call_tool("everything__toggle-simulated-logging", {})
    assert lines, "the opted-in call carried the server's log line"
    assert isinstance(lines[0].data, str) and "message" in lines[0].data.lower()


async def test_legacy_resource_subscription_delivers_updates_for_the_exposed_uri(gw: Harness, token: str) -> None:
    updated = anyio.Event()
    uris: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            uris.append(message.params.uri)
            updated.set()

    uri = "everything+demo://resource/static/document/architecture.md"
    async with gw.client(token, mode="legacy", message_handler=on_message) as client:
        await client.session.subscribe_resource(uri)
        await client.call_tool("everything__toggle-subscriber-updates", {})
        with anyio.fail_after(10):
            await updated.wait()
        await client.call_tool("everything__toggle-subscriber-updates", {})
        await client.session.unsubscribe_resource(uri)
    assert uris[0] == uri


async def test_modern_listen_stream_delivers_updates_and_list_changes(gw: Harness, token: str) -> None:
    uri = "everything+demo://resource/static/document/architecture.md"
    async with gw.client(token, mode="auto") as client:
        async with client.listen(tools_list_changed=True, resource_subscriptions=[uri]) as subscription:
            await client.call_tool("everything__toggle-subscriber-updates", {})
            with anyio.fail_after(10):
                event = await subscription.__anext__()
            assert getattr(event, "uri", None) == uri
            await client.call_tool("everything__toggle-subscriber-updates", {})
            await client.call_tool("dynamic__grow", {"name": "sprout"})
            with anyio.fail_after(10):
                while type(event).__name__ != "ToolsListChanged":
                    event = await subscription.__anext__()
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "dynamic__sprout" in tools
        assert (await client.call_tool("dynamic__sprout", {})).content[0].text == "I am sprout"


async def test_legacy_client_hears_tools_list_changed(gw: Harness, token: str) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with gw.client(token, mode="legacy", message_handler=on_message) as client:
        await client.list_tools()
        await client.call_tool("dynamic__grow", {"name": "shoot"})
        with anyio.fail_after(10):
            await changed.wait()
        assert "dynamic__shoot" in {t.name for t in (await client.list_tools()).tools}


@MODES
async def test_a_client_that_cannot_answer_sampling_gets_a_clean_refusal(gw: Harness, token: str, mode: str) -> None:
    async with gw.client(token, mode=mode) as client:  # no sampling callback: no sampling capability declared
        try:
            result = await client.call_tool("everything__trigger-sampling-request", {"prompt": "x"})
        except MCPError as exc:
            assert "sampling" in exc.message.lower() or "request" in exc.message.lower()
        else:
            assert result.is_error
        assert (await client.call_tool("everything__echo", {"message": "still serving"})).content[0].text == (
            "Echo: still serving"
        )
