"""The per-session SSE event store and the exchange's question keys, over their whole input space."""

from __future__ import annotations

import anyio
import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.server.streamable_http import EventMessage
from mcp_types.jsonrpc import JSONRPCNotification

from gateway.http.resumable import SessionEvents
from gateway.mcp.exchanges import Exchange


def note(n: int) -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"n": n})


async def _replayed(store: SessionEvents, last: str) -> tuple[object, list[EventMessage]]:
    sent: list[EventMessage] = []

    async def send(event: EventMessage) -> None:
        sent.append(event)

    return await store.replay_events_after(last, send), sent


@settings(max_examples=200, deadline=None)
@given(last=st.text(max_size=40), streams=st.lists(st.sampled_from([1, 2, "_GET_stream"]), max_size=12))
def test_no_event_id_but_one_this_session_issued_replays_anything(last: str, streams: list[object]) -> None:
    async def run() -> None:
        mine, other = SessionEvents(), SessionEvents()
        issued = [await mine.store_event(stream, note(i)) for i, stream in enumerate(streams)]
        stolen = [await other.store_event(stream, note(i)) for i, stream in enumerate(streams)]
        for candidate in (last, *stolen):
            if candidate not in issued:
                assert await _replayed(mine, candidate) == (None, [])

    anyio.run(run)


@settings(max_examples=100, deadline=None)
@given(streams=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=20), data=st.data())
def test_a_replay_sends_exactly_its_own_streams_later_events_in_order(streams: list[int], data: st.DataObject) -> None:
    async def run() -> None:
        store = SessionEvents()
        ids = [await store.store_event(stream, note(i)) for i, stream in enumerate(streams)]
        at = data.draw(st.integers(0, len(ids) - 1))
        stream, sent = await _replayed(store, ids[at])
        assert stream == streams[at]
        expected = [ids[i] for i in range(at + 1, len(ids)) if streams[i] == streams[at]]
        assert [e.event_id for e in sent] == expected

    anyio.run(run)


def test_the_store_keeps_only_its_last_events() -> None:
    async def run() -> None:
        store = SessionEvents(limit=4)
        ids = [await store.store_event(1, note(i)) for i in range(10)]
        assert await _replayed(store, ids[0]) == (None, [])  # dropped: nothing to resume from
        _, sent = await _replayed(store, ids[6])
        assert [e.event_id for e in sent] == ids[7:]

    anyio.run(run)


def ask_request() -> types.InputRequest:
    return types.ListRootsRequest()


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.sampled_from(["q1", "q2", "a", "b", "user_name"])), max_size=8))
def test_every_question_gets_its_own_key_and_an_upstream_key_is_kept_where_free(keys: list[str | None]) -> None:
    async def run() -> None:
        exchange = Exchange("x", "sid", ttl=5)
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(exchange.ask, ask_request(), key)
            await anyio.wait_all_tasks_blocked()
            assert len(exchange.questions) == len(keys)  # distinct keys: no question hides another
            named = [k for k in keys if k is not None]
            for key in set(named):
                assert key in exchange.questions
            tg.cancel_scope.cancel()

    anyio.run(run)
