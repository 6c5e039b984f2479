import pytest

from tests.support.harness import running_gateway, time_manifest

pytestmark = pytest.mark.anyio


async def test_an_agent_lists_and_calls_its_granted_tools_in_both_eras(tmp_path):
    async with running_gateway(tmp_path, manifests=[time_manifest()]) as gw:
        token = await gw.open_session("alice-bot", task="smoke")
        for mode in ("legacy", "auto"):
            async with gw.client(token, mode=mode) as client:
                tools = await client.list_tools()
                assert sorted(t.name for t in tools.tools) == ["time__convert_time", "time__get_current_time"]
                result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
                assert not result.is_error, result
                assert "UTC" in result.content[0].text
