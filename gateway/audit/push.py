"""The audit stream's OCSF events, pushed to an HTTP collector (`telemetry: {ocsf: {url}}` in gateway.yaml).

Every record of the gateway's stream and of the operator chain becomes the OCSF event
`audit export --format ocsf` prints for it; they are POSTed, oldest first, as JSON arrays of
at most `batch` events, with the configured headers (a collector's token: never logged).
A batch is retried, backing off to 30 s, until the collector answers 2xx; only then does the
cursor (`<state_dir>/ocsf-push.json`, the last seq pushed of each stream file) move on. A restart
resumes after the last accepted batch, so nothing is lost; at most the batch in flight when
the process died is sent again (collectors deduplicate on `metadata.uid`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2 as httpx  # the HTTP client the MCP SDK already loads

from gateway.audit.files import cli_path
from gateway.audit.ocsf import to_ocsf
from gateway.audit.tail import Filter, Follower, history
from gateway.config.files import OcsfPushSettings

log = logging.getLogger("gateway.audit.push")

CURSOR = "ocsf-push.json"
POLL_SECONDS = 0.5  # how often the stream is looked at for new records
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
Pending = list[tuple[str, dict[str, Any]]]  # (chain, record)


class OcsfPush:
    """Follows both chains from the cursor on and delivers their events to the collector, at least once."""

    def __init__(self, settings: OcsfPushSettings, audit_path: Path, state_dir: Path) -> None:
        self.settings = settings
        # Keyed by the stream's path: another `audit.path` is another chain, pushed from its start.
        self.streams = {str(path): path for path in (audit_path, cli_path(audit_path))}
        self.cursor_path = state_dir / CURSOR
        self.cursor: dict[str, int] = {}
        parts = urlsplit(settings.url)
        port = f":{parts.port}" if parts.port else ""
        self.shown = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"  # for logs: no credentials, no query

    def load_cursor(self) -> dict[str, int]:
        """The last seq pushed of each chain; {} (push everything) for none or an unreadable one."""
        try:
            data = json.loads(self.cursor_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("%s is unreadable: pushing every record again (duplicates, never a gap)", self.cursor_path)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if k in self.streams and isinstance(v, int)}

    def _save_cursor(self) -> None:
        """Written whole or not at all. One that cannot be written only means resending after a restart: the
        gateway keeps serving and pushing."""
        partial = self.cursor_path.with_name(f".{CURSOR}.partial")
        try:
            partial.write_text(json.dumps(self.cursor, sort_keys=True))
            os.replace(partial, self.cursor_path)
        except OSError as exc:
            log.warning(
                "cannot write %s (%s): a restart will push these events again",
                self.cursor_path,
                exc.strerror or type(exc).__name__,
            )

    def _new(self, chain: str, records: list[dict[str, Any]]) -> Pending:
        after = self.cursor.get(chain, -1)
        return [(chain, r) for r in records if isinstance(r.get("seq"), int) and r["seq"] > after]

    def _backlog(self, followers: dict[str, Follower]) -> Pending:
        pending = [p for chain, f in followers.items() for p in self._new(chain, history([f], Filter(), None))]
        pending.sort(key=lambda p: float(p[1].get("ts", 0)))
        return pending

    def _poll(self, followers: dict[str, Follower]) -> Pending:
        return [p for chain, f in followers.items() for p in self._new(chain, f.poll())]

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Push from the cursor on, in a task of its own, until exit."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._push)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _push(self) -> None:
        self.cursor = await anyio.to_thread.run_sync(self.load_cursor)
        followers = {chain: Follower(path) for chain, path in self.streams.items()}
        try:
            pending = await anyio.to_thread.run_sync(self._backlog, followers)
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
                while True:
                    while pending:
                        batch, pending = pending[: self.settings.batch], pending[self.settings.batch :]
                        await self._deliver(http, batch)
                        for chain, record in batch:
                            self.cursor[chain] = max(self.cursor.get(chain, -1), record["seq"])
                        await anyio.to_thread.run_sync(self._save_cursor)
                    await anyio.sleep(POLL_SECONDS)
                    pending = await anyio.to_thread.run_sync(self._poll, followers)
        finally:
            for follower in followers.values():
                follower.close()

    async def _deliver(self, http: httpx.AsyncClient, batch: Pending) -> None:
        """POST one batch until the collector accepts it (2xx)."""
        body = json.dumps([to_ocsf(record) for _, record in batch], separators=(",", ":")).encode()
        headers = {**self.settings.headers, "content-type": "application/json"}
        backoff, failing = FIRST_BACKOFF, False
        while True:
            try:
                response = await http.post(self.settings.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    if failing:
                        log.info("OCSF collector %s accepts events again", self.shown)
                    return
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if not failing:  # once per outage, not once per retry
                log.warning(
                    "OCSF collector %s refused %d events (%s): retrying, nothing is dropped",
                    self.shown,
                    len(batch),
                    why,
                )
                failing = True
            await anyio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
