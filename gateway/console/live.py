"""Live updates as server-sent events: the Sessions table as it changes, and the audit tail as it grows.

A stream lasts as long as the operator's sign-in: it re-checks the cookie on
every tick, and ends (`event: signedout`) when the sign-in has ended, expired
or lost its standing (admin token changed, email no longer an operator).
Audit records are sent as JSON and inserted by the page as text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import StreamingResponse

from gateway.audit.files import cli_path
from gateway.audit.tail import Filter, Follower, history, readable
from gateway.config.durations import parse_moment
from gateway.errors import OperatorError, Unavailable

if TYPE_CHECKING:
    from gateway.console.auth import ConsoleAuth
    from gateway.console.deps import ConsoleDeps

TICK = 0.5  # seconds between looks at the store or the audit files
KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream
DEFAULT_LINES = 50
MAX_LINES = 1000


class SignedOut(Exception):
    """The operator's sign-in is no longer valid."""


def _event(name: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


def _stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"x-accel-buffering": "no", "cache-control": "no-store"}
    )


def rows_stream(deps: ConsoleDeps, render: Callable[[], Awaitable[str]]) -> StreamingResponse:
    """The sessions table body, sent whenever it changes (and once at the start)."""

    async def body() -> AsyncIterator[bytes]:
        last: str | None = None
        quiet = 0.0
        while not deps.stopping.is_set():
            try:
                rows = await render()
            except SignedOut:
                yield _event("signedout", "")
                return
            except Unavailable as exc:
                yield _event("problem", str(exc))
                rows = last or ""
            if rows != last:
                yield _event("rows", rows)
                last, quiet = rows, 0.0
            elif quiet >= KEEPALIVE:
                yield b": keep-alive\n\n"
                quiet = 0.0
            await anyio.sleep(TICK)
            quiet += TICK

    return _stream(body())


def audit_filter(request: Request, now: float) -> tuple[Filter, int | None]:
    """`audit tail`'s filters from the query: agent, session, event (globs, comma-separated), since, n.

    Raises:
        OperatorError: a bad since or n.
    """
    query = request.query_params
    events = tuple(e.strip() for value in query.getlist("event") for e in value.split(",") if e.strip())
    since = None
    if query.get("since"):
        try:
            since = parse_moment(query["since"], now)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
    n = query.get("n") or ""
    if n and (not n.isdigit() or int(n) > MAX_LINES):
        raise OperatorError(f"n must be a whole number up to {MAX_LINES}")
    limit = int(n) if n else (None if since is not None else DEFAULT_LINES)
    return Filter(query.get("agent") or None, query.get("session") or None, events, since), limit


def _record(record: dict[str, Any]) -> str:
    return json.dumps(
        {
            "line": readable(record),
            "event": str(record.get("event", "")),
            "seq": record.get("seq"),
            "gateway": str(record.get("gateway", "")),
        },
        ensure_ascii=True,
    )


def audit_stream(
    deps: ConsoleDeps, auth: ConsoleAuth, request: Request, wanted: Filter, limit: int | None
) -> StreamingResponse:
    """The last `limit` matching records, then every matching record as it is written (`audit tail --follow`)."""

    async def body() -> AsyncIterator[bytes]:
        path = deps.config.audit.path
        followers = [Follower(path), Follower(cli_path(path))]
        try:
            past = await anyio.to_thread.run_sync(history, followers, wanted, limit)  # may read rotated files
            for record in past[-MAX_LINES:]:
                yield _event("record", _record(record))
            yield _event("ready", "")
            quiet = 0.0
            while not deps.stopping.is_set():
                if auth.signed_in(request) is None:
                    yield _event("signedout", "")
                    return
                fresh = [r for follower in followers for r in follower.poll() if wanted.matches(r)]
                for record in sorted(fresh, key=lambda r: float(r.get("ts", 0))):
                    yield _event("record", _record(record))
                if fresh:
                    quiet = 0.0
                elif quiet >= KEEPALIVE:
                    yield b": keep-alive\n\n"
                    quiet = 0.0
                await anyio.sleep(TICK)
                quiet += TICK
        finally:
            for follower in followers:
                follower.close()

    return _stream(body())
