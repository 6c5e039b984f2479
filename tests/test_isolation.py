"""Two agents on one gateway: each sees and calls exactly its grant, and nothing of the other's traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import Harness, everything_stdio_manifest, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

AGENTS = {
    "alice-bot": {
        "owner": "alice@example.com",
        "grant": {"tools": ["time.*", "everything.echo", "everything.trigger-*", "shared.*"]},
    },
    "bob-bot": {
        "owner": "bob@example.com",
        "grant": {
            "tools": ["time.get_current_time", "everything.*", "shared.*"],
            "resources": ["everything", "shared"],
        },
    },
    "carol-bot": {"owner": "carol@example.com", "grant": {"tools": ["shared.*"], "resources": ["shared"]}},
}
ALICE_TOOLS = {
    "time__get_current_time",
    "time__convert_time",
    "everything__echo",
    "everything__trigger-long-running-operation",
    "everything__trigger-sampling-request",
    "everything__trigger-elicitation-request",
}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    manifests = [
        time_manifest(),
        everything_stdio_manifest(isolation="per_session"),
        everything_stdio_manifest("shared", isolation="shared"),
    ]
    async with running_gateway(tmp_path_factory.mktemp("isolation"), manifests=manifests, agents=AGENTS) as gw:
        yield gw


async def unknown_tool_error(client: Any, name: str) -> types.ErrorData:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(name, {})
    return raised.value.error


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_each_agent_sees_exactly_its_grant_and_nothing_else_exists_for_it(gw: Harness, mode: str) -> None:
    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    async with gw.client(alice, mode=mode) as a, gw.client(bob, mode=mode) as b:
        listed = await a.list_tools()
        assert listed.cache_scope == "private"  # a filtered list is never publicly cacheable
        alice_tools = {t.name for t in listed.tools}
        bob_tools = {t.name for t in (await b.list_tools()).tools}
        assert ALICE_TOOLS <= alice_tools
        assert alice_tools - ALICE_TOOLS <= {
            n for n in alice_tools if n.startswith(("everything__trigger-", "shared__"))
        }
        assert "time__convert_time" not in bob_tools and "everything__get-sum" in bob_tools
        assert "everything__get-sum" not in alice_tools

        for name in sorted(alice_tools & {"time__get_current_time", "everything__echo"}):
            args = {"timezone": "UTC"} if name.startswith("time") else {"message": "x"}
            assert not (await a.call_tool(name, args)).is_error

        denied = await unknown_tool_error(a, "everything__get-sum")
        missing = await unknown_tool_error(a, "everything__no-such-tool")
        assert (denied.code, denied.message) == (types.INVALID_PARAMS, "Unknown tool: everything__get-sum")
        assert (missing.code, missing.message) == (types.INVALID_PARAMS, "Unknown tool: everything__no-such-tool")
        assert denied.data == missing.data
        bob_denied = await unknown_tool_error(b, "time__convert_time")
        assert bob_denied.message == "Unknown tool: time__convert_time"

        # Resources: bob's grant has them, alice's does not; for alice they do not exist.
        assert (await b.list_resources()).resources
        assert (await a.list_resources()).resources == []
        uri = (await b.list_resources()).resources[0].uri
        with pytest.raises(MCPError) as not_granted:
            await a.read_resource(uri)
        with pytest.raises(MCPError) as not_there:
            await a.read_resource("everything+demo://no/such/resource")
        assert not_granted.value.error.code == not_there.value.error.code
        assert not_granted.value.error.message.replace(uri, "URI") == not_there.value.error.message.replace(
            "everything+demo://no/such/resource", "URI"
        )


async def test_concurrent_callers_get_only_their_own_results_and_progress(gw: Harness) -> None:
    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    progress: dict[str, list[float]] = {"alice": [], "bob": []}
    results: dict[str, list[str]] = {"alice": [], "bob": []}

    async def run(who: str, token: str, steps: int) -> None:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress[who].append(value)
            assert total == steps

        async with gw.client(token) as client:
            for i in range(5):
                echo = await client.call_tool("everything__echo", {"message": f"{who}-{i}"})
                results[who].append(echo.content[0].text)
            await client.session.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 0.2 * steps, "steps": steps},
                progress_callback=on_progress,
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "alice", alice, 2)
        tg.start_soon(run, "bob", bob, 4)
    assert results == {w: [f"Echo: {w}-{i}" for i in range(5)] for w in ("alice", "bob")}
    assert progress == {"alice": [1.0, 2.0], "bob": [1.0, 2.0, 3.0, 4.0]}


def recording_sampler(who: str, seen: list[tuple[str, str]], gate: anyio.Event | None = None) -> Any:
    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append((who, params.messages[0].content.text))  # type: ignore[union-attr]
        if gate is not None:
            await gate.wait()
        return types.CreateMessageResult(
            role="assistant", model="m", content=types.TextContent(type="text", text=f"{who} answered")
        )

    return sample


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sampling_goes_to_the_agent_whose_call_caused_it(gw: Harness, mode: str) -> None:
    seen: list[tuple[str, str]] = []
    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    async with (
        gw.client(alice, mode=mode, sampling_callback=recording_sampler("alice", seen)) as a,
        gw.client(bob, mode=mode, sampling_callback=recording_sampler("bob", seen)) as b,
    ):
        await b.list_tools()
        for tool in ("everything__trigger-sampling-request", "shared__trigger-sampling-request"):
            result = await a.call_tool(tool, {"prompt": "from-alice"})
            assert "alice answered" in result.content[0].text
    assert seen and all(who == "alice" and "from-alice" in text for who, text in seen)


async def test_a_shared_server_refuses_requests_it_cannot_attribute_rather_than_guess(gw: Harness) -> None:
    """Two callers in flight on one shared connection: a sampling request is never delivered to the wrong one."""
    seen: list[tuple[str, str]] = []
    gate = anyio.Event()
    moved = {"alice": anyio.Event(), "bob": anyio.Event()}  # set when a caller was asked, or finished
    outcomes: dict[str, str] = {}

    def sampler(who: str) -> Any:
        inner = recording_sampler(who, seen, gate)

        async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            moved[who].set()
            return await inner(context, params)  # type: ignore[no-any-return]

        return sample

    async def call(who: str, token: str, started: anyio.Event | None) -> None:
        async with gw.client(token, mode="legacy", sampling_callback=sampler(who)) as client:
            if started is not None:
                await started.wait()
            try:
                result = await client.call_tool("shared__trigger-sampling-request", {"prompt": f"from-{who}"})
                outcomes[who] = str(result.content)
            except MCPError as exc:
                outcomes[who] = exc.message
        moved[who].set()

    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "alice", alice, None)
        tg.start_soon(call, "bob", bob, moved["alice"])  # bob calls while alice's call waits on its answer
        with anyio.fail_after(15):
            await moved["bob"].wait()
        gate.set()
    assert ("alice", "Resource trigger-sampling-request context: from-alice") in seen
    assert all(text.endswith(f"from-{who}") for who, text in seen), seen
    assert "bob" not in {who for who, _ in seen}, "bob's request arrived while two calls were in flight"
    assert set(outcomes) == {"alice", "bob"}


async def test_logs_of_a_per_session_server_reach_only_its_own_agent(gw: Harness) -> None:
    alice_lines: list[Any] = []
    bob_lines: list[Any] = []
    got = anyio.Event()

    async def alice_log(params: types.LoggingMessageNotificationParams) -> None:
        alice_lines.append(params)
        got.set()

    async def bob_log(params: types.LoggingMessageNotificationParams) -> None:
        bob_lines.append(params)

    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    async with (
        gw.client(bob, mode="legacy", logging_callback=bob_log) as b,
        gw.client(alice, mode="legacy", logging_callback=alice_log) as a,
    ):
        await b.call_tool("everything__toggle-simulated-logging", {})
        await b.call_tool("everything__toggle-simulated-logging", {})
        await a.list_tools()
    assert bob_lines and not alice_lines


async def test_a_paused_calls_request_state_is_useless_to_another_session(gw: Harness) -> None:
    alice, bob = await gw.open_session("alice-bot"), await gw.open_session("bob-bot")
    declares = {"sampling_callback": recording_sampler("unused", [])}  # the clients can answer sampling
    async with gw.client(alice, mode="auto", **declares) as a, gw.client(bob, mode="auto", **declares) as b:
        paused = await a.session.call_tool(
            "everything__trigger-sampling-request", {"prompt": "x"}, allow_input_required=True
        )
        assert isinstance(paused, types.InputRequiredResult) and paused.request_state
        (key,) = paused.input_requests or {}
        answer = types.CreateMessageResult(
            role="assistant", model="m", content=types.TextContent(type="text", text="stolen")
        )
        for client, state in ((b, paused.request_state), (a, paused.request_state[:-3] + "abc")):
            with pytest.raises(MCPError) as refused:
                await client.session.call_tool(
                    "everything__trigger-sampling-request",
                    {"prompt": "x"},
                    input_responses={key: answer},
                    request_state=state,
                    allow_input_required=True,
                )
            assert "requestState is invalid" in refused.value.message
        done = await a.session.call_tool(
            "everything__trigger-sampling-request",
            {"prompt": "x"},
            input_responses={key: answer},
            request_state=paused.request_state,
            allow_input_required=True,
        )
        assert isinstance(done, types.CallToolResult) and "stolen" in done.content[0].text


class _Leg:
    sid = "s1"

    async def ask(self, request: types.InputRequest) -> types.InputResponse | types.ErrorData:
        raise AssertionError("a paused call's questions go out in its result")

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        pass

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        pass


async def test_a_request_state_names_no_exchange_of_another_process_sharing_the_sealing_key() -> None:
    """After a restart, or on another replica, the same key opens the state; its exchange must not be found."""
    from gateway.identity.sealing import Sealer
    from gateway.mcp.exchanges import INVALID_STATE, Exchanges

    key = bytes(32)
    answered: list[str] = []

    async def work(leg: Any) -> types.CallToolResult:
        answer = await leg.ask(types.ListRootsRequest())
        answered.append(answer.roots[0].name)
        return types.CallToolResult(content=[])

    before, after = (Exchanges(Sealer(key), anyio.current_time, ttl=5) for _ in range(2))
    async with before.run(), after.run():
        stale = await before.start("s1", _Leg(), work)
        live = await after.start("s1", _Leg(), work)  # the same counter value in the other process
        assert isinstance(stale, types.InputRequiredResult) and isinstance(live, types.InputRequiredResult)
        roots = {"q1": types.ListRootsResult(roots=[types.Root(uri="file:///stale", name="stale")])}
        with pytest.raises(MCPError) as refused:
            await after.resume("s1", stale.request_state or "", roots, _Leg())
        assert refused.value.message == INVALID_STATE and not answered


async def test_shared_subscriptions_are_refcounted_and_delivered_only_to_subscribers(gw: Harness) -> None:
    first, second = "demo://resource/static/document/architecture.md", "demo://resource/dynamic/text/1"
    got: dict[str, list[str]] = {"bob": [], "carol": []}
    arrived = {"bob": anyio.Condition(), "carol": anyio.Condition()}

    def handler(who: str) -> Any:
        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                async with arrived[who]:
                    got[who].append(message.params.uri)
                    arrived[who].notify_all()

        return on_message

    async def until(who: str, count: int) -> None:
        with anyio.fail_after(10):
            async with arrived[who]:
                while len(got[who]) < count:
                    await arrived[who].wait()

    alice, bob, carol = [await gw.open_session(a) for a in ("alice-bot", "bob-bot", "carol-bot")]
    url = gw.server_url("shared")
    async with (
        gw.client(alice, mode="legacy", url=url) as a,
        gw.client(bob, mode="legacy", message_handler=handler("bob"), url=url) as b,
        gw.client(carol, mode="legacy", message_handler=handler("carol"), url=url) as c,
    ):
        with pytest.raises(MCPError):  # alice's grant has no resources: the URI does not exist for her
            await a.session.subscribe_resource(first)
        await b.session.subscribe_resource(first)
        await c.session.subscribe_resource(first)
        await c.session.subscribe_resource(second)

        await c.call_tool("toggle-subscriber-updates", {})  # the server sends one round now
        await until("bob", 1)
        await until("carol", 2)
        await c.call_tool("toggle-subscriber-updates", {})
        assert got["bob"] == [first] and sorted(got["carol"]) == sorted([first, second])

        await c.session.unsubscribe_resource(first)  # bob still holds `first` upstream
        await c.call_tool("toggle-subscriber-updates", {})
        await until("bob", 2)
        await until("carol", 3)
        await c.call_tool("toggle-subscriber-updates", {})
    assert got["bob"] == [first, first]
    assert got["carol"][2:] == [second]


async def test_a_terminated_mcp_session_releases_its_subscriptions_while_the_agent_session_lives_on(
    gw: Harness,
) -> None:
    uri = "demo://resource/static/document/architecture.md"
    bob = await gw.open_session("bob-bot")
    url = gw.server_url("shared")
    for _ in range(2):  # the second MCP session of the same agent session subscribes afresh
        async with gw.client(bob, mode="legacy", url=url) as b:
            await b.session.subscribe_resource(uri)
            assert ("shared", uri) in gw.gateway.fanout.held_upstream()
        # the client's DELETE ended its MCP session: nobody is left to tell, so the upstream is released
        assert ("shared", uri) not in gw.gateway.fanout.held_upstream()
    async with gw.client(bob, mode="legacy", url=url) as b:  # and the agent session itself still works
        assert (await b.call_tool("echo", {"message": "still here"})).content[0].text == "Echo: still here"
