"""POST /v1/usage: model usage joins tool calls on the session id and counts against its budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.usage import parse
from tests.support.counter import agent, counter_manifest, sid_of, stop_of, upstream_calls
from tests.support.harness import Harness, running_gateway

pytestmark = pytest.mark.anyio

PRICES = {"prices": {"gpt-test": {"input_per_mtok": 2.5, "output_per_mtok": 10}}}


async def report(gw: Harness, token: str | None, body: Any, *, raw: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with gw.http() as http:
        if raw is not None:
            return await http.post("/v1/usage", content=raw, headers={**headers, "content-type": "application/json"})
        return await http.post("/v1/usage", json=body, headers=headers)


async def test_model_usage_is_recorded_priced_and_counted_against_the_session_budget(tmp_path):
    log = tmp_path / "calls.log"
    async with running_gateway(
        tmp_path, manifests=[counter_manifest(log)], extra=PRICES, agents={"bot": agent({"session_tokens": 10_000})}
    ) as gw:
        token = await gw.open_session("bot", task="write the report")
        sid = await sid_of(gw, token)
        async with gw.client(token) as client:
            assert not (await client.call_tool("counter__echo", {"text": "context"})).is_error

        priced = await report(gw, token, {"model": "gpt-test", "input_tokens": 4000, "output_tokens": 1000})
        assert priced.status_code == 200, priced.text
        assert priced.json() == {
            "recorded": True,
            "session": sid,
            "model": "gpt-test",
            "tokens": 5000,
            "cost_usd": 0.02,
            "cost_source": "priced",
        }
        reported = await report(
            gw, token, {"model": "other", "input_tokens": 3000, "output_tokens": 2500, "cost_usd": 0.5}
        )
        assert reported.json()["cost_usd"] == 0.5 and reported.json()["cost_source"] == "reported"
        unpriced = await report(gw, token, {"model": "unknown", "input_tokens": 1, "output_tokens": 0})
        assert unpriced.json()["cost_usd"] is None and unpriced.json()["cost_source"] == "unpriced"

        usage = gw.audit("model.usage")
        assert [(r["session"], r["agent"], r["task"], r["model"], r.get("cost_usd")) for r in usage] == [
            (sid, "bot", "write the report", "gpt-test", 0.02),
            (sid, "bot", "write the report", "other", 0.5),
            (sid, "bot", "write the report", "unknown", None),
        ]
        [call] = [r for r in gw.audit("tool.call") if r["decision"] == "allow"]
        assert call["session"] == usage[0]["session"]  # model and tool calls join on one session id

        # 10,501 model tokens on a 10,000-token budget: the next tool call is stopped, nothing forwarded.
        async with gw.client(token) as client:
            stop = stop_of(await client.call_tool("counter__echo", {"text": "more"}))
        assert stop["limit"] == "session_tokens" and stop["used"] > 10_000
        assert upstream_calls(log) == ["echo context"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (json.dumps({"input_tokens": 1, "output_tokens": 1}).encode(), "model: Field required"),
        (
            json.dumps({"model": "m", "input_tokens": -5, "output_tokens": 1}).encode(),
            "input_tokens: Input should be greater than or equal to 0",
        ),
        (
            json.dumps({"model": "m", "input_tokens": "12", "output_tokens": 1}).encode(),
            "input_tokens: Input should be a valid integer",
        ),
        (
            json.dumps({"model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": -1}).encode(),
            "cost_usd: Input should be greater than or equal to 0",
        ),
        (
            json.dumps({"model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.7e308}).encode(),
            "cost_usd: Input should be less than or equal to 1000000",
        ),
        (
            b'{"model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": Infinity}',
            "cost_usd: Input should be a finite number",
        ),
        (
            json.dumps({"model": "m", "input_tokens": 10**9 + 1, "output_tokens": 1}).encode(),
            "input_tokens: Input should be less than or equal to 1000000000",
        ),
        (
            json.dumps({"model": "m", "input_tokens": 1, "output_tokens": 1, "user": "x"}).encode(),
            "user: unknown field",
        ),
        (json.dumps({"model": "", "input_tokens": 1, "output_tokens": 1}).encode(), "model: String should have"),
    ],
)
async def test_a_malformed_usage_report_gets_a_clear_error_and_nothing_is_recorded(tmp_path, body, error):
    async with running_gateway(tmp_path, manifests=[], agents={"bot": agent({})}) as gw:
        token = await gw.open_session("bot")
        response = await report(gw, token, None, raw=body)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert response.json()["error_description"].startswith(error)
        assert gw.audit("model.usage") == []
        [session] = await gw.gateway.store.list_sessions("bot")
        assert session.tokens == 0


async def test_usage_for_a_closed_session_or_without_a_token_is_refused_like_mcp_and_not_recorded(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents={"bot": agent({})}) as gw:
        token = await gw.open_session("bot")
        body = {"model": "m", "input_tokens": 10, "output_tokens": 10}
        assert await gw.gateway.sessions.end(await sid_of(gw, token), "closed", "closed")
        for credential in (token, None, "not-a-jwt"):
            refused = await report(gw, credential, body)
            assert refused.status_code == 401
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith('Bearer error="invalid_token"')
            assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource"' in challenge
        assert "session closed" in (await report(gw, token, body)).json()["error_description"]
        async with gw.http() as http:
            wrong_method = await http.get("/v1/usage", headers={"Authorization": f"Bearer {token}"})
        assert wrong_method.status_code == 401  # authentication comes first, whatever the method
        assert gw.audit("model.usage") == []


async def test_usage_rejects_other_methods_and_oversized_bodies(tmp_path):
    async with running_gateway(tmp_path, manifests=[], agents={"bot": agent({})}) as gw:
        token = await gw.open_session("bot")
        async with gw.http() as http:
            got = await http.get("/v1/usage", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 405 and got.headers["allow"] == "POST"
        huge = await report(gw, token, None, raw=b'{"model": "' + b"m" * 20_000 + b'"}')
        assert huge.status_code == 413
        assert gw.audit("model.usage") == []


_valid = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=50),
        "input_tokens": st.integers(0, 10**9),
        "output_tokens": st.integers(0, 10**9),
    }
)


@given(
    _valid,
    st.sampled_from(["input_tokens", "output_tokens"]),
    st.one_of(st.integers(max_value=-1), st.floats(), st.booleans(), st.text(), st.none()),
)
def test_a_report_with_any_bad_token_count_is_rejected(body, field, bad):
    with pytest.raises(ValueError, match=field):
        parse(json.dumps({**body, field: bad}).encode())


@given(_valid)
def test_any_well_formed_report_is_accepted_as_sent(body):
    parsed = parse(json.dumps(body).encode())
    assert (parsed.model, parsed.input_tokens, parsed.output_tokens) == (
        body["model"],
        body["input_tokens"],
        body["output_tokens"],
    )


async def test_usage_too_large_to_total_is_refused_with_a_400_naming_the_field_and_nothing_is_counted(tmp_path):
    """Two reports of 1.7e308 USD once overflowed the report's totals to inf (and `Infinity`, not JSON)."""
    async with running_gateway(tmp_path, manifests=[], agents={"bot": agent({})}) as gw:
        token = await gw.open_session("bot")
        for _ in range(2):
            refused = await report(
                gw, token, {"model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.7e308}
            )
            assert refused.status_code == 400
            assert refused.json()["error_description"].startswith("cost_usd: Input should be less than or equal to")
        largest = await report(
            gw, token, {"model": "m", "input_tokens": 10**9, "output_tokens": 10**9, "cost_usd": 1e6}
        )
        assert largest.status_code == 200
        assert [r["cost_usd"] for r in gw.audit("model.usage")] == [1e6]
        [session] = await gw.gateway.store.list_sessions("bot")
        assert session.tokens == 2 * 10**9


@given(
    _valid,
    st.one_of(
        st.floats(min_value=1e6, exclude_min=True),
        st.floats(max_value=0, exclude_max=True),
        st.just(float("inf")),
        st.just(float("nan")),
    ),
)
def test_a_report_with_a_cost_out_of_range_or_not_finite_is_rejected(body, bad):
    with pytest.raises(ValueError, match="cost_usd"):
        parse(json.dumps({**body, "cost_usd": bad}).encode())


@given(_valid, st.floats(min_value=0, max_value=1e6))
def test_any_finite_cost_up_to_the_maximum_is_accepted(body, cost):
    assert parse(json.dumps({**body, "cost_usd": cost}).encode()).cost_usd == cost
