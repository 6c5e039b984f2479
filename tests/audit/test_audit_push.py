"""Pushing OCSF events to an HTTP collector: retried until accepted, resumed from the cursor after a restart."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.files import audit_files
from gateway.audit.ocsf import to_ocsf
from gateway.audit.push import CURSOR
from gateway.config.files import load_gateway_config
from gateway.errors import ConfigError
from tests.audit.test_audit_ocsf import problems
from tests.support.harness import dynamic_manifest, running_gateway, write_config
from tests.support.serving import serving

pytestmark = pytest.mark.anyio

AGENTS = {"bot": {"owner": "ops@example.com", "grant": {"tools": ["dynamic.speak"]}}}
SECRET_HEADER = "Splunk 0123-not-a-real-token"


@dataclass
class Collector:
    """A SIEM's HTTP event collector: refuses the first `refuse` POSTs with 503, then keeps every event."""

    url: str
    refuse: int
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[int] = field(default_factory=list)  # events per POST, accepted or not
    authorizations: set[str] = field(default_factory=set)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def receive(self, request: Request) -> Response:
        batch = json.loads(await request.body())
        self.posts.append(len(batch))
        self.authorizations.add(request.headers.get("authorization", ""))
        if self.refuse > 0:
            self.refuse -= 1
            return Response(status_code=503)
        self.events += batch
        self._arrived.set()
        return Response(status_code=200)

    async def until(self, event_code: str, count: int = 1) -> None:
        with anyio.fail_after(20):
            while sum(e["metadata"]["event_code"] == event_code for e in self.events) < count:
                await self._arrived.wait()
                self._arrived = anyio.Event()


@contextlib.asynccontextmanager
async def collector(refuse: int = 0) -> AsyncIterator[Collector]:
    found = Collector("", refuse)
    app = Starlette(routes=[Route("/services/collector", found.receive, methods=["POST"])])
    async with serving(app) as base:
        found.url = f"{base}/services/collector"
        yield found


def _records(root: Path) -> list[dict[str, Any]]:
    path = root / "state" / "audit.jsonl"
    return [json.loads(line) for p in audit_files(path) for line in p.read_text().splitlines() if line]


async def test_every_audit_record_reaches_the_collector_once_across_a_refusal_and_a_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.audit.push")
    async with collector(refuse=1) as siem:
        settings = {"telemetry": {"ocsf": {"url": siem.url, "headers": {"Authorization": SECRET_HEADER}, "batch": 3}}}
        async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=AGENTS, extra=settings) as gw:
            async with gw.client(await gw.open_session("bot")) as client:
                assert not (await client.call_tool("dynamic__speak", {})).is_error
            await siem.until("tool.result")  # after the refused first batch was sent again
            # The same batch, retried: as many events as the stream held when the pusher first read it, at most 3.
            assert siem.posts[0] == siem.posts[1] <= 3
        # gateway.stopped was written after the pusher stopped: the restart sends it, and nothing twice.
        async with running_gateway(tmp_path, manifests=[dynamic_manifest()], agents=AGENTS, extra=settings):
            await siem.until("gateway.started", 2)
            await siem.until("gateway.stopped", 1)
        written = _records(tmp_path)
    cursor = json.loads((tmp_path / "state" / CURSOR).read_text())
    uids = [e["metadata"]["uid"] for e in siem.events]
    assert len(uids) == len(set(uids))  # no duplicates
    by_uid = {e["metadata"]["uid"]: e for e in siem.events}
    # Everything up to the cursor arrived, exactly as `audit export --format ocsf` prints it, and valid OCSF.
    delivered = [r for r in written if r["seq"] <= cursor[str(tmp_path / "state" / "audit.jsonl")]]
    assert {to_ocsf(r)["metadata"]["uid"] for r in delivered} == set(by_uid)
    assert all(by_uid[to_ocsf(r)["metadata"]["uid"]] == json.loads(json.dumps(to_ocsf(r))) for r in delivered)
    assert all(not problems(e) for e in siem.events)
    assert {"tool.call", "tool.result", "gateway.stopped", "gateway.started"} <= {r["event"] for r in delivered}
    assert max(siem.posts) <= 3 and siem.authorizations == {SECRET_HEADER}
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.audit.push"]
    assert (
        said[0] == f"OCSF collector {siem.url} refused {siem.posts[0]} events (HTTP 503): retrying, nothing is dropped"
    )
    assert not any("Splunk" in line for line in said)  # the collector's token is sent, never logged


@pytest.mark.parametrize(
    ("ocsf", "named"),
    [
        ({"url": "ftp://siem"}, "telemetry.ocsf.url"),
        ({"url": "https://siem", "batch": 0}, "telemetry.ocsf.batch"),
        ({}, "telemetry.ocsf.url"),
    ],
)
def test_a_bad_ocsf_collector_setting_is_a_one_line_config_error_naming_it(tmp_path, ocsf, named):
    config = write_config(tmp_path, 8765, manifests=[], extra={"telemetry": {"ocsf": ocsf}})
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(config)
    assert named in str(caught.value) and "\n" not in str(caught.value).strip()
