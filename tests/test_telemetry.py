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
from mcp.shared.exceptions import MCPError

from gateway.config.files import TelemetrySettings, load_gateway_config
from gateway.errors import ConfigError
from gateway.telemetry import OFF, Tracing, build_telemetry
from gateway.upstream.http_client import mcp_http_client
from tests.audit.test_audit_gateway import _point_at_a_full_disk
from tests.identity.support import basic, client_credentials, give_secret, token
from tests.support.harness import REPO, dynamic_manifest, everything_stdio_manifest, running_gateway, write_config
from tests.support.otlp import otlp_receiver

pytestmark = pytest.mark.anyio

AGENTS = {
    "bot": {
        "owner": "ops@example.com",
        "cost_center": "research",
        "delegators": ["*@example.com"],
        "grant": {"tools": ["dynamic.meta", "dynamic.speak"]},
    }
}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def test_a_tool_calls_spans_carry_identity_and_join_the_callers_and_the_upstreams_trace(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        token = await gw.open_session("bot", on_behalf_of="ada@example.com", task="trace me")
        sid = gw.gateway.tokens.verify(token).sid
        async with gw.client(token) as client:
            result = await client.call_tool(
                "dynamic__meta", {}, meta={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"}
            )
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
    identity = {
        "gen_ai.agent.id": "bot",
        "enduser.id": "ada@example.com",
        "gateway.session.id": sid,
        "gateway.task": "trace me",
        "gateway.call_id": call["call_id"],
        "gateway.audit.seq": call["seq"],
    }
    assert server.attributes == {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "dynamic__meta",
        "jsonrpc.request.id": server.attributes["jsonrpc.request.id"],
        "mcp.protocol.version": "2026-07-28",
        **identity,
    }
    assert upstream.attributes == {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "meta",
        "server.address": "dynamic",
        **identity,
    }
    assert server.resource["service.name"] == "mcp-gateway"
    assert server.resource["service.instance.id"] == gw.gateway.config.instance
    [denied] = [s for s in spans if s.name == "tools/call dynamic__count"]
    assert denied.attributes["error.type"] == "-32602" and denied.status_code == 2  # STATUS_CODE_ERROR
    assert denied.parent_span_id == "" and denied.trace_id != TRACE  # no traceparent sent: a trace of its own


async def test_the_http_traceparent_header_parents_the_span_when_meta_has_none(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        token = await gw.open_session("bot")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
        async with (
            mcp_http_client(headers=headers) as http,
            Client(streamable_http_client(gw.mcp_url, http_client=http), mode="legacy", cache=None) as client,
        ):
            result = await client.call_tool("dynamic__speak", {})
        assert not result.is_error
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(2)
    [server] = [s for s in spans if s.name == "tools/call dynamic__speak"]
    [upstream] = [s for s in spans if s.name == "tools/call speak"]
    assert (server.trace_id, server.parent_span_id, upstream.parent_span_id) == (TRACE, CALLER_SPAN, server.span_id)
    assert server.attributes["mcp.protocol.version"] == "2025-11-25" and "enduser.id" not in server.attributes


async def test_the_duration_histogram_and_the_token_counter_match_the_calls_and_their_audit_records(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        async with gw.client(await gw.open_session("bot")) as client:
            for _ in range(3):
                assert not (await client.call_tool("dynamic__speak", {})).is_error
            with pytest.raises(MCPError):
                await client.call_tool("dynamic__count", {})
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        results = gw.audit("tool.result")
    points = receiver.metric_exports[-1]  # cumulative: the last export holds the totals
    durations = {
        p.attributes.get("error.type"): p
        for p in points
        if p.metric == "mcp.server.operation.duration" and p.attributes["mcp.method.name"] == "tools/call"
    }
    assert durations[None].count == 3 and durations["-32602"].count == 1 and durations[None].unit == "s"
    assert 0 < durations[None].value < 60
    tokens = {p.attributes["gateway.direction"]: p for p in points if p.metric == "gateway.tokens"}
    assert tokens["response"].value == sum(r["response_tokens"] for r in results) > 0
    assert tokens["response"].attributes == {
        "gen_ai.agent.id": "bot",
        "gateway.server": "dynamic",
        "gen_ai.tool.name": "dynamic.speak",
        "gateway.direction": "response",
    }
    assert tokens["response"].unit == "{token}"


async def test_a_prompts_request_tokens_are_counted_once(tmp_path):
    """Regression: the token counter skipped only tool.call among admissions, so a prompt's arguments were
    counted on prompt.get and again on prompt.result."""
    agents = {"reader": {"owner": "r@example.com", "grant": {"prompts": ["everything"]}}}
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[everything_stdio_manifest()],
            agents=agents,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        async with gw.client(await gw.open_session("reader")) as client:
            await client.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        [result] = gw.audit("prompt.result")
    points = receiver.metric_exports[-1]
    [request] = [p for p in points if p.metric == "gateway.tokens" and p.attributes["gateway.direction"] == "request"]
    assert request.value == result["request_tokens"] > 0


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
    done = subprocess.run(
        [sys.executable, "-c", _OFF_PROBE, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Off", "[]"]


async def test_the_off_probe_would_see_the_sdk_if_it_were_loaded(tmp_path):
    async with otlp_receiver() as receiver:
        probe = _OFF_PROBE.replace(
            "manifests=[dynamic_manifest()], agents=agents)",
            "manifests=[dynamic_manifest()], agents=agents, "
            f"extra={{'telemetry': {{'otlp_endpoint': '{receiver.url}'}}}})",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = await anyio.run_process([sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().split()[0] == "Tracing" and "opentelemetry.sdk.trace" in done.stdout.decode()
        assert any(s.name == "tools/call dynamic__speak" for s in receiver.spans)  # exported at shutdown


async def test_a_token_request_has_a_server_span_naming_the_grant_and_the_agent_and_no_secret(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        secret = await give_secret(gw, "bot")
        issued = await client_credentials(gw, "bot", secret)
        refused = await token(gw, {"grant_type": "client_credentials"}, basic("bot", "not-" + secret))
        assert refused.status_code == 401
        odd = await token(gw, {"grant_type": "caller-chosen-text"}, basic("bot", secret))
        assert odd.status_code == 400
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(3)
    [ok, failed] = [s for s in spans if s.name == "oauth.token client_credentials"]
    assert ok.kind == failed.kind == "SERVER"
    assert ok.attributes == {
        "http.request.method": "POST",
        "url.path": "/oauth/token",
        "oauth.grant_type": "client_credentials",
        "http.response.status_code": 200,
        "gen_ai.agent.id": "bot",
        "gateway.session.id": issued["session_id"],
    }
    assert failed.attributes["error.type"] == "invalid_client" and failed.status_code == 2  # STATUS_CODE_ERROR
    assert "gen_ai.agent.id" not in failed.attributes
    [other] = [s for s in spans if s.name == "oauth.token other"]  # a grant type the caller made up is not echoed
    assert other.attributes["oauth.grant_type"] == "other"
    assert other.attributes["error.type"] == "unsupported_grant_type"
    # Neither the secret, nor the token, nor the Authorization header reaches the collector, in any export.
    everything = b"".join(receiver.payloads)
    for text in (
        secret,
        issued["access_token"],
        issued["access_token"].split(".")[2],
        basic("bot", secret)["Authorization"],
        "caller-chosen-text",
    ):
        assert text.encode() not in everything


async def test_a_calls_durable_audit_write_is_a_span_under_its_request_carrying_the_records_seq(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        async with gw.client(await gw.open_session("bot")) as client:
            assert not (await client.call_tool("dynamic__speak", {})).is_error
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(3)
        [call] = [r for r in gw.audit("tool.call") if r["decision"] == "allow"]
    [server] = [s for s in spans if s.name == "tools/call dynamic__speak"]
    [write] = [s for s in spans if s.name == "audit.write"]
    [upstream] = [s for s in spans if s.name == "tools/call speak"]
    assert write.kind == "INTERNAL" and (write.trace_id, write.parent_span_id) == (server.trace_id, server.span_id)
    assert write.attributes == {
        "gateway.audit.durable": True,
        "gateway.audit.seq": call["seq"],
        "gateway.audit.event": "tool.call",
        "gateway.call_id": call["call_id"],
    }
    assert upstream.parent_span_id == server.span_id  # the write is over before the upstream is called


async def test_a_refused_durable_audit_write_is_an_error_span_and_the_call_never_goes_upstream(tmp_path):
    async with (
        otlp_receiver() as receiver,
        running_gateway(
            tmp_path,
            manifests=[dynamic_manifest()],
            agents=AGENTS,
            extra={"telemetry": {"otlp_endpoint": receiver.url}},
        ) as gw,
    ):
        async with gw.client(await gw.open_session("bot"), mode="legacy") as client:
            restore = _point_at_a_full_disk(gw.gateway.config.audit.path)
            try:
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("dynamic__speak", {})
            finally:
                restore()
        assert refused.value.code == -32011
        assert await anyio.to_thread.run_sync(gw.gateway.telemetry.force_flush)
        spans = await receiver.wait_for(2)
    [server] = [s for s in spans if s.name == "tools/call dynamic__speak"]
    [write] = [s for s in spans if s.name == "audit.write"]
    assert write.parent_span_id == server.span_id and write.status_code == 2  # STATUS_CODE_ERROR
    assert write.attributes == {"gateway.audit.durable": True, "error.type": "AuditUnavailable"}
    assert not [s for s in spans if s.name == "tools/call speak"]  # nothing was forwarded
