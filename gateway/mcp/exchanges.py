"""Calls that pause for input on a 2026-07-28 connection.

A 2026-07-28 client cannot receive server-initiated requests; instead a call
answers `InputRequiredResult` and the client retries it with the answers and
the echoed `requestState`. When an upstream asks for input mid-call (a
handshake-era server's sampling or elicitation, or a 2026-07-28 server's own
InputRequiredResult), the gateway keeps that upstream call running in an
exchange, hands the client the questions plus a sealed `requestState` naming
the exchange and the caller's session, and resumes it when the client comes
back. Another session presenting that state gets the same answer as a forged
one: nothing to resume.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.errors import Unavailable
from gateway.identity.sealing import InvalidEnvelope, Sealer
from gateway.tasks import OwnedTasks
from gateway.upstream import Downstream
from gateway.upstream.caller import CALLER

log = logging.getLogger("gateway.exchanges")

INVALID_STATE = "requestState is invalid, expired, or belongs to another session"


@dataclass
class _Question:
    request: types.InputRequest
    sent: bool = False
    answer: types.InputResponse | types.ErrorData | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)


class Exchange:
    """The `Downstream` of a paused call: questions queue here until the client's next leg.

    Questions asked together go out together, each under the upstream's own key where it has one (a client
    correlates them by key); only the sealed requestState stays the gateway's.
    """

    def __init__(self, id: str, sid: str, ttl: float, method: str = "tools/call") -> None:
        self.id = id
        self.sid = sid
        self.ttl = ttl
        self.method = method  # a state is resumed only by the method that started it
        self.caller = CALLER.get()  # created while serving the client's first leg: that client
        self.leg: Downstream | None = None
        self.questions: dict[str, _Question] = {}
        self.changed = anyio.Event()
        self.collected: anyio.Event | None = None  # set once a requestState naming it went out
        self.done = False
        self.result: types.Result | None = None
        self.error: BaseException | None = None
        self._keys = itertools.count(1)

    def _poke(self) -> None:
        self.changed.set()

    async def ask(self, request: types.InputRequest, key: str | None = None) -> types.InputResponse | types.ErrorData:
        if self.caller is not None and not self.caller.answers(request.method):
            return types.ErrorData(
                code=types.METHOD_NOT_FOUND, message=f"the client did not declare the capability {request.method} needs"
            )
        question = _Question(request)
        if key is None or key in self.questions:
            key = f"q{next(self._keys)}"
            while key in self.questions:
                key = f"q{next(self._keys)}"
        self.questions[key] = question
        self._poke()
        with anyio.move_on_after(self.ttl):
            await question.answered.wait()
        self.questions.pop(key, None)
        if question.answer is None:
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the agent did not answer in time")
        return question.answer

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.leg is not None:
            await self.leg.progress(progress, total, message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.leg is not None:
            await self.leg.log(params)

    def answer(self, responses: types.InputResponses) -> None:
        """Deliver the client's answers; a question it sent no answer for is asked again on this leg."""
        for key, response in responses.items():
            question = self.questions.get(key)
            if question is not None and question.sent and not question.answered.is_set():
                question.answer = response
                question.answered.set()
        for question in self.questions.values():
            if question.sent and not question.answered.is_set():
                question.sent = False


Work = Callable[[Downstream], Awaitable[types.Result]]
_SETTLE_ROUNDS = 8


async def _settled(exchange: Exchange) -> dict[str, _Question]:
    """The unsent questions once the ones asked alongside the first have joined it.

    An upstream's round is asked concurrently (one task per request, started together), so every one of
    them is queued within a scheduling round or two of the first: wait while the set still grows.
    """
    unsent = {k: q for k, q in exchange.questions.items() if not q.sent}
    for _ in range(_SETTLE_ROUNDS):
        await anyio.lowlevel.checkpoint()
        now = {k: q for k, q in exchange.questions.items() if not q.sent}
        if len(now) == len(unsent):
            break
        unsent = now
    return unsent


Answer = types.CallToolResult | types.GetPromptResult | types.ReadResourceResult | types.InputRequiredResult


class Exchanges:
    def __init__(
        self,
        sealer: Sealer,
        clock: Callable[[], float],
        ttl: float = 300.0,
    ) -> None:
        self.sealer = sealer
        self.clock = clock
        self.ttl = ttl
        self._live: dict[str, Exchange] = {}  # exchanges a client holds a requestState for
        # The sealing key outlives a restart and is shared by replicas, so a bare counter could name
        # another process's exchange of the same session; the random prefix makes ids unique across them.
        self._prefix = secrets.token_urlsafe(8)
        self._ids = itertools.count(1)
        self._tasks = OwnedTasks()  # where paused calls run, while `run()` is entered

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Own the task group the exchanges' calls run in; leaving it cancels the ones still running."""
        async with self._tasks.run():
            yield

    async def start(self, sid: str, leg: Downstream, work: Work, method: str = "tools/call") -> Any:
        """Run `work` in the background and answer this leg with its result or its first questions.

        Raises:
            Unavailable: the gateway is not running (or is stopping).
        """
        tasks = self._tasks.group
        if tasks is None:
            raise Unavailable("the gateway is not running")
        exchange = Exchange(f"{self._prefix}.{next(self._ids)}", sid, self.ttl, method)
        tasks.start_soon(self._run, exchange, work)
        return await self._leg(exchange, leg)

    async def resume(
        self,
        sid: str,
        state: str,
        responses: types.InputResponses | None,
        leg: Downstream,
        method: str = "tools/call",
    ) -> Any:
        """Continue the exchange `state` names, with the client's answers.

        Raises:
            MCPError: the state is forged, expired, another session's, or its call is gone.
        """
        try:
            payload = self.sealer.open(state, self.clock())
        except InvalidEnvelope:
            raise MCPError(types.INVALID_PARAMS, INVALID_STATE) from None
        exchange = self._live.get(str(payload.get("x")))
        if payload.get("sid") != sid or exchange is None or exchange.sid != sid or exchange.method != method:
            raise MCPError(types.INVALID_PARAMS, INVALID_STATE)
        exchange.answer(responses or {})
        return await self._leg(exchange, leg)

    async def _run(self, exchange: Exchange, work: Work) -> None:
        try:
            exchange.result = await work(exchange)
        except Exception as exc:  # delivered to whichever leg collects the outcome
            exchange.error = exc
        finally:
            exchange.done = True
            exchange._poke()
        if exchange.collected is not None:
            with anyio.move_on_after(self.ttl):  # keep the outcome for a client that is still coming back
                await exchange.collected.wait()
            self._live.pop(exchange.id, None)

    async def _leg(self, exchange: Exchange, leg: Downstream) -> Any:
        exchange.leg = leg
        try:
            while True:
                if exchange.done:
                    self._live.pop(exchange.id, None)
                    if exchange.collected is not None:
                        exchange.collected.set()
                    if exchange.error is not None:
                        raise exchange.error
                    assert exchange.result is not None
                    return exchange.result
                unsent = {k: q for k, q in exchange.questions.items() if not q.sent}
                if unsent:
                    unsent = await _settled(exchange)
                    for question in unsent.values():
                        question.sent = True
                    if exchange.collected is None:
                        exchange.collected = anyio.Event()
                        self._live[exchange.id] = exchange
                    state = self.sealer.seal({"x": exchange.id, "sid": exchange.sid}, self.clock() + self.ttl)
                    return types.InputRequiredResult(
                        input_requests={k: q.request for k, q in unsent.items()}, request_state=state
                    )
                await exchange.changed.wait()
                exchange.changed = anyio.Event()
        finally:
            exchange.leg = None
