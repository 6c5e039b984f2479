"""The evidence report over known traffic: how each action's token was got, whether it was key-bound, and why
an action did not count towards a share."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.files import audit_files
from gateway.audit.ocsf import to_ocsf
from gateway.report.chargeback import build, read_records
from gateway.report.evidence import SHARES, evidence
from tests.audit.test_audit_ocsf import problems
from tests.identity.support import (
    DpopAuth,
    DpopKey,
    client_credentials,
    dpop_client,
    give_secret,
    identity_provider,
    token,
)
from tests.identity.support import cli as operator_cli
from tests.support.cli import run_cli as cli_run
from tests.support.harness import Harness, running_gateway, time_manifest

pytestmark = pytest.mark.anyio

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
K8S = "https://kubernetes.default.svc.cluster.local"
K8S_SUBJECT = "system:serviceaccount:research:indexer"
CALL = ("time__get_current_time", {"timezone": "UTC"})
PER_CALL = {"tools.listed", "tool.call", "tool.result", "model.usage"}


async def run_cli(*argv: str) -> int:
    status, _ = await cli_run(*argv)
    return status


async def usage(gw: Harness, headers: dict[str, str]) -> None:
    async with gw.http() as http:
        response = await http.post(
            "/v1/usage", json={"model": "m", "input_tokens": 10, "output_tokens": 5}, headers=headers
        )
    assert response.status_code == 200, response.text


async def report_json(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "report.json"
    assert (
        await run_cli(
            "report", "--format", "json", "--output", str(out), "--config", str(tmp_path / "gateway.yaml"), *extra
        )
        == 0
    )
    return dict(json.loads(out.read_text()))


async def test_every_call_record_says_how_its_token_was_got_and_the_report_counts_secretless_and_bound_actions(
    tmp_path,
):
    """A secret-based agent (Bearer), a workload agent with a DPoP-bound token, and a token an operator minted."""
    async with identity_provider(issuer=K8S, audience="mcp-gateway") as k8s:
        agents = {
            "secret-bot": {"owner": "ops@example.com", "grant": {"tools": ["time.*"]}},
            "k8s-bot": {
                "owner": "research@example.com",
                "grant": {"tools": ["time.*"]},
                "workload": {"issuer": k8s.issuer, "subject": K8S_SUBJECT},
            },
        }
        async with running_gateway(
            tmp_path, manifests=[time_manifest()], agents=agents, extra={"workload_issuers": [k8s.config()]}
        ) as gw:
            secret = await give_secret(gw, "secret-bot")
            bearer = await client_credentials(gw, "secret-bot", secret)
            async with gw.client(bearer["access_token"]) as client:
                for _ in range(2):
                    assert not (await client.call_tool(*CALL)).is_error
            await usage(gw, {"Authorization": f"Bearer {bearer['access_token']}"})

            key = DpopKey()
            now = int(time.time())
            assertion = k8s.sign(
                {"sub": K8S_SUBJECT, "aud": [k8s.audience], "exp": now + 600, "jti": str(uuid.uuid4())},
                email=None,
                email_verified=None,
            )
            response = await token(
                gw,
                {"grant_type": JWT_BEARER, "assertion": assertion},
                {"DPoP": key.proof("POST", f"{gw.url}/oauth/token")},
            )
            assert response.status_code == 200, response.text
            bound = response.json()
            assert bound["token_type"] == "DPoP"
            async with dpop_client(gw.mcp_url, DpopAuth(key, bound["access_token"])) as client:
                await client.list_tools()
                for _ in range(3):
                    assert not (await client.call_tool(*CALL)).is_error
            await usage(
                gw,
                {
                    "Authorization": f"DPoP {bound['access_token']}",
                    "DPoP": key.proof("POST", f"{gw.url}/v1/usage", bound["access_token"]),
                },
            )

            minted = (await operator_cli(gw, "sessions", "open", "--agent", "secret-bot")).strip()
            async with gw.client(minted) as client:
                assert not (await client.call_tool(*CALL)).is_error

            records = gw.audit()
            sessions = {
                bearer["session_id"]: ("secret", None),
                bound["session_id"]: ("workload", key.thumbprint),
                gw.gateway.tokens.verify(minted).sid: ("operator", None),
            }
            for sid, (credential, jkt) in sessions.items():
                mine = [r for r in records if r.get("session") == sid and r["event"] in PER_CALL]
                assert {r["event"] for r in mine} >= {"tool.call", "tool.result"}
                assert all(r.get("credential") == credential for r in mine), mine
                assert all(r.get("dpop_jkt") == jkt for r in mine), mine  # absent when the token is a bearer one
            assert {r["event"] for r in records if r.get("session") == bound["session_id"]} >= PER_CALL

            for record in records:  # every record, key-bound or not, is valid OCSF; the key is the session's
                assert problems(to_ocsf(record)) == [], record["event"]
            call = to_ocsf(
                next(r for r in records if r["event"] == "tool.call" and r["session"] == bound["session_id"])
            )
            assert call["actor"]["session"]["credential_uid"] == key.thumbprint
            assert call["unmapped"]["credential"] == "workload"

    data = await report_json(tmp_path)
    ev = data["evidence"]
    assert ev["actions"] == 8  # secret-bot: 2 calls and a usage report, then 1 call with the minted token; k8s: 3 + 1
    assert ev["by_credential"] == {"operator": 1, "secret": 3, "workload": 4}
    secretless = ev["shares"]["without_stored_secret"]
    assert (secretless["value"], secretless["counted"], secretless["total"]) == (0.5, 4, 8)
    assert ev["without_stored_secret_share"] == 0.5 and ev["without_stored_secret"] == 4
    assert secretless["missing"] == {"secret": 3, "operator": 1}
    assert secretless["explanations"] == [
        "3 actions used tokens got with a stored client secret (secret-bot 3)",
        "1 action used a token an operator minted (sessions open) (secret-bot 1)",
    ]
    constrained = ev["shares"]["sender_constrained"]
    assert (constrained["value"], constrained["counted"], constrained["missing"]) == (0.5, 4, {"bearer": 4})
    assert constrained["missing_by_agent"] == {"bearer": {"secret-bot": 4}}
    assert constrained["explanations"] == ["4 actions used bearer tokens bound to no key (no DPoP) (secret-bot 4)"]
    assert ev["sender_constrained_share"] == 0.5
    unique = ev["shares"]["unique_identity"]
    assert (unique["value"], unique["missing"], unique["explanations"]) == (1.0, {}, [])

    table = tmp_path / "report.txt"
    assert await run_cli("report", "--output", str(table), "--config", str(tmp_path / "gateway.yaml")) == 0
    text = table.read_text()
    assert "  by agents without stored secrets 50.0% (4 of 8)\n" in text
    assert "    not counted: 3 actions used tokens got with a stored client secret (secret-bot 3)\n" in text
    assert "  with sender-constrained tokens   50.0% (4 of 8)\n" in text


async def test_a_shared_credential_flag_taints_only_that_agents_actions_within_its_window(tmp_path):
    """Before: one flag marked every action of the agent in the report, however long before or after it."""
    agents = {
        "bob-bot": {"owner": "bob@example.com", "grant": {"tools": ["time.*"]}},
        "alice-bot": {"owner": "alice@example.com", "grant": {"tools": ["time.*"]}},
    }
    extra = {
        "shared_credentials": {"max_fingerprints": 1, "window": "5m"},
        "session_defaults": {"ttl": "8h", "idle_timeout": "8h"},
    }
    async with running_gateway(tmp_path, manifests=[time_manifest()], agents=agents, extra=extra) as gw:
        bob, alice = await gw.open_session("bob-bot"), await gw.open_session("alice-bot")
        async with gw.client(bob) as client:  # an hour before the flag
            for _ in range(2):
                assert not (await client.call_tool(*CALL)).is_error
        gw.clock.advance(3600)
        async with gw.client(bob) as client:
            assert not (await client.call_tool(*CALL)).is_error  # a minute before the flag: within its window
            gw.clock.advance(60)
            async with gw.client(bob, client_info=types.Implementation(name="another-ide", version="1")) as other:
                assert not (await other.call_tool(*CALL)).is_error  # flagged as the second client, then served
            async with gw.client(alice) as client_of_alice:
                assert not (await client_of_alice.call_tool(*CALL)).is_error  # another agent: not concerned
        flags = gw.audit("credential.shared_suspected")
        assert [(f["agent"], f["fingerprints"], f["window_s"]) for f in flags] == [("bob-bot", 2, 300)]
        gw.clock.advance(3600)
        async with gw.client(bob) as client:  # an hour after it
            for _ in range(2):
                assert not (await client.call_tool(*CALL)).is_error
        assert len(gw.audit("credential.shared_suspected")) == 1

    ev = (await report_json(tmp_path))["evidence"]
    assert ev["actions"] == 7
    assert ev["tied_to_unique_identity"] == 5  # everything but the two calls within 5 minutes of the flag
    unique = ev["shares"]["unique_identity"]
    assert (unique["value"], unique["counted"], unique["total"]) == (round(5 / 7, 4), 5, 7)
    assert unique["missing"] == {"shared_credential": 2}
    assert unique["missing_by_agent"] == {"shared_credential": {"bob-bot": 2}}
    assert unique["explanations"] == [
        "2 actions of agent bob-bot were made while its credential was flagged as shared by 2 clients "
        "(within 300 s of 1 credential.shared_suspected record)"
    ]
    assert ev["shared_credential_flags"] == 1 and ev["flagged_agents"] == ["bob-bot"]

    # A period that starts just after the flag still sees it: the call a minute after it is flagged.
    flag_ts = flags[0]["ts"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(flag_ts - 1))  # the call before it is left out
    later = (await report_json(tmp_path, "--since", since))["evidence"]["shares"]["unique_identity"]
    assert (later["counted"], later["total"], later["missing"]) == (3, 4, {"shared_credential": 1})

    html = tmp_path / "report.html"
    assert (
        await run_cli("report", "--format", "html", "--output", str(html), "--config", str(tmp_path / "gateway.yaml"))
        == 0
    )
    assert (
        "not counted: 2 actions of agent bob-bot were made while its credential was flagged as shared"
        in html.read_text()
    )


# ------------------------------------------------------------------ the rule, over any records

_AGENTS = st.sampled_from(["a", "b", None])
_ACTION = st.fixed_dictionaries(
    {
        "event": st.just("tool.call"),
        "decision": st.just("allow"),
        "agent": _AGENTS,
        "ts": st.integers(0, 1000),
        "session": st.sampled_from(["s1", "s2"]),  # whole seconds: exact distances
        "grant": st.sampled_from(["g1", None]),
        "credential": st.sampled_from(
            ["secret", "private_key_jwt", "workload", "id_jag", "interactive", "operator", "bogus", None, 7]
        ),
        "dpop_jkt": st.sampled_from(["jkt", None]),
    }
)
_FLAG = st.fixed_dictionaries(
    {
        "event": st.just("credential.shared_suspected"),
        "agent": _AGENTS,
        "ts": st.integers(0, 1000),
        "window_s": st.one_of(st.integers(1, 300), st.sampled_from([None, 0, -5, "5m", True, float("inf")])),
        "fingerprints": st.integers(2, 9),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ACTION, max_size=30), st.lists(_FLAG, max_size=6))
def test_each_share_accounts_for_every_action_and_a_flag_concerns_only_its_agent_within_its_window(actions, flags):
    outcomes = {"s1": "closed", "s2": "expired"}
    shares = evidence(actions, flags, lambda r: outcomes[r["session"]])["shares"]
    for name in SHARES:
        share = shares[name]
        assert share["total"] == len(actions)
        assert share["counted"] + sum(share["missing"].values()) == len(actions)
        assert {r: sum(a.values()) for r, a in share["missing_by_agent"].items()} == share["missing"]
        assert share["value"] == (round(share["counted"] / len(actions), 4) if actions else None)
        # One sentence per reason; for a shared credential, one per agent concerned.
        shared = share["missing_by_agent"].pop("shared_credential", {})
        assert len(share["explanations"]) == len(share["missing_by_agent"]) + len(shared)

    def window(flag: dict[str, Any]) -> float:
        w = flag["window_s"]
        return w if isinstance(w, int) and not isinstance(w, bool) and w > 0 else float("inf")

    tainted = sum(
        1
        for r in actions
        if r["agent"] and any(f["agent"] == r["agent"] and abs(r["ts"] - f["ts"]) < window(f) for f in flags)
    )
    assert shares["unique_identity"]["missing"].get("shared_credential", 0) == tainted
    assert shares["unique_identity"]["missing"].get("no_agent", 0) == sum(1 for r in actions if not r["agent"])
    secretless = sum(1 for r in actions if r["credential"] in ("workload", "interactive"))
    assert shares["without_stored_secret"]["counted"] == secretless
    unknown = sum(
        1
        for r in actions
        if r["credential"] not in ("secret", "private_key_jwt", "workload", "id_jag", "interactive", "operator")
    )
    assert shares["without_stored_secret"]["missing"].get("unknown", 0) == unknown
    assert shares["sender_constrained"]["counted"] == sum(1 for r in actions if r["dpop_jkt"])
    assert shares["closed_cleanly"]["missing"].get("expired", 0) == sum(1 for r in actions if r["session"] == "s2")


def test_the_report_reads_a_flag_written_before_its_period_and_ignores_one_long_before():
    base = {"event": "tool.call", "decision": "allow", "agent": "a", "session": "s", "grant": "g"}
    records = [
        {"event": "credential.shared_suspected", "agent": "a", "ts": 10.0, "window_s": 300, "fingerprints": 6},
        {**base, "ts": 100.0},
        {**base, "ts": 400.0},  # 90 s after the flag; 390 s after it
    ]
    report = build(records, "agent", since=50.0)
    assert report.evidence["shares"]["unique_identity"]["missing"] == {"shared_credential": 1}
    assert report.evidence["tied_to_unique_identity"] == 1
    assert report.evidence["shared_credential_flags"] == 0  # counted in its own period, not this one


def test_a_report_over_files_written_before_credentials_were_recorded_says_so(tmp_path):
    audit = tmp_path / "audit.jsonl"
    audit.write_text(
        json.dumps(
            {"ts": 1.0, "event": "tool.call", "decision": "allow", "agent": "old-bot", "session": "s", "grant": "g"}
        )
        + "\n"
    )
    records, _ = read_records(audit_files(audit))
    share = build(records, "agent").evidence["shares"]["without_stored_secret"]
    assert share["missing"] == {"unknown": 1}
    assert share["explanations"] == [
        "1 action does not say how its token was got (written before the gateway recorded it) (old-bot 1)"
    ]
