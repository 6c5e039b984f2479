"""OpenTelemetry: real calls' spans reach a real OTLP/HTTP receiver, joined to the caller's and the upstream's trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from gateway.config import TelemetrySettings, load_gateway_config
from gateway.errors import ConfigError
from gateway.telemetry import OFF, Tracing, build_telemetry
from tests.support.harness import REPO, dynamic_manifest, running_gateway, write_config
from tests.support.otlp import otlp_receiver

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "ops@example.com", "cost_center": "research", "delegators": ["*@example.com"],
                  "grant": {"tools": ["dynamic.meta", "dynamic.speak"]}}}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def test_a_tool_calls_spans_carry_identity_and_join_the_callers_and_the_upstreams_trace(tmp_path):
    async with otlp_receiver() as receiver, running_gateway(
        tmp_path, manifests=[dynamic_manifest()], agents=AGENTS, extra={"telemetry": {"otlp_endpoint": receiver.url}}
    ) as gw:
        token = await gw.open_session("bot", on_behalf_of="ada@example.com", task="trace me")
        sid = gw.gateway.tokens.verify(token).sid
        async with gw.client(token) as client:
            result = await client.call_tool("dynamic__meta", {}, meta={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01",
                                                                      "tracestate": "vendor=1"})
            with pytest.raises(MCPError):
                await client.call_tool("dynamic__count", {})  # not granted: the span says so
        upstream_saw = result.structured_content or json.loads(result.content[0].text)
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(3)
        [call] = [r for r in gw.audit("tool.call") if r["decision"] == "allow"]

    [server] = [s for s in spans if s.name == "tools/call dynamic__meta"]
    [upstream] = [s for s in spans if s.name == "tools/call meta"]
    assert (server.kind, upstream.kind) == ("SERVER", "CLIENT")
    # The gateway's spans continue the caller's trace; the upstream span is the server span's child.
    assert server.trace_id == upstream.trace_id == TRACE and server.parent_span_id == CALLER_SPAN
    assert upstream.parent_span_id == server.span_id
    # ...and the upstream received the upstream span's context in its request's _meta.
    assert upstream_saw["traceparent"] == f"00-{TRACE}-{upstream.span_id}-01"
    assert upstream_saw["tracestate"] == "vendor=1"
    identity = {"gen_ai.agent.id": "bot", "enduser.id": "ada@example.com", "gateway.session.id": sid,
                "gateway.task": "trace me", "gateway.call_id": call["call_id"], "gateway.audit.seq": call["seq"]}
    assert server.attributes == {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "dynamic__meta",
        "jsonrpc.request.id": server.attributes["jsonrpc.request.id"], "mcp.protocol.version": "2026-07-28",
        **identity,
    }
    assert upstream.attributes == {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "meta",
        "server.address": "dynamic", **identity,
    }
    assert server.resource["service.name"] == "mcp-gateway"
    assert server.resource["service.instance.id"] == gw.gateway.config.instance
    [denied] = [s for s in spans if s.name == "tools/call dynamic__count"]
    assert denied.attributes["error.type"] == "-32602" and denied.status_code == 2  # STATUS_CODE_ERROR
    assert denied.parent_span_id == "" and denied.trace_id != TRACE  # no traceparent sent: a trace of its own


async def test_the_http_traceparent_header_parents_the_span_when_meta_has_none(tmp_path):
    async with otlp_receiver() as receiver, running_gateway(
        tmp_path, manifests=[dynamic_manifest()], agents=AGENTS, extra={"telemetry": {"otlp_endpoint": receiver.url}}
    ) as gw:
        token = await gw.open_session("bot")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
        async with create_mcp_http_client(headers=headers) as http, Client(
            streamable_http_client(gw.mcp_url, http_client=http), mode="legacy", cache=None
        ) as client:
            result = await client.call_tool("dynamic__speak", {})
        assert not result.is_error
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(2)
    [server] = [s for s in spans if s.name == "tools/call dynamic__speak"]
    [upstream] = [s for s in spans if s.name == "tools/call speak"]
    assert (server.trace_id, server.parent_span_id, upstream.parent_span_id) == (TRACE, CALLER_SPAN, server.span_id)
    assert server.attributes["mcp.protocol.version"] == "2025-11-25" and "enduser.id" not in server.attributes


async def test_the_duration_histogram_and_the_token_counter_match_the_calls_and_their_audit_records(tmp_path):
    async with otlp_receiver() as receiver, running_gateway(
        tmp_path, manifests=[dynamic_manifest()], agents=AGENTS, extra={"telemetry": {"otlp_endpoint": receiver.url}}
    ) as gw:
        async with gw.client(await gw.open_session("bot")) as client:
            for _ in range(3):
                assert not (await client.call_tool("dynamic__speak", {})).is_error
            with pytest.raises(MCPError):
                await client.call_tool("dynamic__count", {})
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        results = gw.audit("tool.result")
    points = receiver.metric_exports[-1]  # cumulative: the last export holds the totals
    durations = {p.attributes.get("error.type"): p for p in points
                 if p.metric == "mcp.server.operation.duration" and p.attributes["mcp.method.name"] == "tools/call"}
    assert durations[None].count == 3 and durations["-32602"].count == 1 and durations[None].unit == "s"
    assert 0 < durations[None].value < 60
    tokens = {p.attributes["gateway.direction"]: p for p in points if p.metric == "gateway.tokens"}
    assert tokens["response"].value == sum(r["response_tokens"] for r in results) > 0
    assert tokens["response"].attributes == {"gen_ai.agent.id": "bot", "gateway.server": "dynamic",
                                             "gen_ai.tool.name": "dynamic.speak", "gateway.direction": "response"}
    assert tokens["response"].unit == "{token}"


def test_telemetry_is_off_unless_an_endpoint_is_configured_and_the_sdk_can_turn_it_off():
    assert build_telemetry(TelemetrySettings(), "gw", environ={}) is OFF
    on = build_telemetry(TelemetrySettings(), "gw", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert isinstance(on, Tracing)
    on.shutdown()
    configured = TelemetrySettings(otlp_endpoint="http://127.0.0.1:9/")
    assert configured.otlp_endpoint == "http://127.0.0.1:9"
    assert build_telemetry(configured, "gw", environ={"OTEL_SDK_DISABLED": "true"}) is OFF


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "ftp://collector", "http://collector:4318/?x=1"])
def test_a_bad_collector_url_is_a_one_line_config_error(tmp_path, endpoint):
    config = write_config(tmp_path, 8765, manifests=[], extra={"telemetry": {"otlp_endpoint": endpoint}})
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(config)
    assert "telemetry.otlp_endpoint" in str(caught.value) and "\n" not in str(caught.value).strip()


_OFF_PROBE = textwrap.dedent("""
    import sys, anyio
    from pathlib import Path
    from tests.support.harness import dynamic_manifest, running_gateway

    async def main():
        agents = {"bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.speak"]}}}
        async with running_gateway(Path(sys.argv[1]), manifests=[dynamic_manifest()], agents=agents) as gw:
            async with gw.client(await gw.open_session("bot")) as client:
                assert not (await client.call_tool("dynamic__speak", {})).is_error
            print(type(gw.gateway.telemetry).__name__)
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))

    anyio.run(main)
""")


def test_with_telemetry_off_a_call_loads_neither_the_otel_sdk_nor_an_exporter(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", _OFF_PROBE, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Off", "[]"]


async def test_the_off_probe_would_see_the_sdk_if_it_were_loaded(tmp_path):
    async with otlp_receiver() as receiver:
        probe = _OFF_PROBE.replace("manifests=[dynamic_manifest()], agents=agents)",
                                   "manifests=[dynamic_manifest()], agents=agents, "
                                   f"extra={{'telemetry': {{'otlp_endpoint': '{receiver.url}'}}}})")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = await anyio.run_process([sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().split()[0] == "Tracing" and "opentelemetry.sdk.trace" in done.stdout.decode()
        assert any(s.name == "tools/call dynamic__speak" for s in receiver.spans)  # exported at shutdown
