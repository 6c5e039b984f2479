"""The Audit page: a live tail with `audit tail`'s filters, and the chain status `audit verify` gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.events import Event
from gateway.audit.files import audit_files
from gateway.audit.verify import stored_checkpoints, verify
from gateway.console import live
from gateway.console.auth import Operator
from gateway.console.web import Web

if TYPE_CHECKING:
    from gateway.console.deps import ConsoleDeps


@dataclass(frozen=True)
class Verified:
    state: Literal["intact", "broken", "unverified"]
    records: int
    summaries: list[str]
    at: float


class ChainStatus:
    """The last verification of this gateway's stream, kept for the page."""

    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        self.last: Verified | None = None
        self._lock = anyio.Lock()

    def _key(self, kid: str) -> Ed25519PublicKey | None:
        key = self.deps.keys.verify_key(kid)
        return key.public if key is not None else None

    async def verify(self) -> Verified:
        """Every file of the stream and the operator chain against the store's checkpoints, as
        `mcp-gateway audit verify` does.

        Raises:
            StoreUnavailable: the store's checkpoints cannot be read.
        """
        async with self._lock:
            stored = await stored_checkpoints(self.deps.store, self.deps.config.instance)
            files = audit_files(self.deps.config.audit.path)
            chains = await anyio.to_thread.run_sync(lambda: verify(files, self._key, stored))
            state: Literal["intact", "broken", "unverified"] = (
                "broken"
                if any(c.broken for c in chains)
                else "unverified"
                if any(c.unverified for c in chains)
                else "intact"
            )
            self.last = Verified(state, sum(c.seq for c in chains), [c.summary() for c in chains], self.deps.clock())
            return self.last


def routes(web: Web) -> list[Route]:
    chain = ChainStatus(web.deps)

    async def page(request: Request, operator: Operator) -> Response:
        live.audit_filter(request, web.deps.clock())  # a bad filter is refused here, on the page
        return web.html(
            request,
            "audit.html",
            operator=operator,
            page="audit",
            chain=chain.last,
            filters=request.query_params,
            notice=web.notice(request),
            live_query=request.url.query,
        )

    async def updates(request: Request, operator: Operator) -> Response:
        wanted, limit = live.audit_filter(request, web.deps.clock())
        return live.audit_stream(web.deps, web.auth, request, wanted, limit)

    async def check(request: Request, operator: Operator, form: FormData) -> Response:
        verified = await chain.verify()
        await web.deps.audit.emit(
            Event.AUDIT_VERIFIED, durable=True, actor=operator.actor, outcome=verified.state, records=verified.records
        )
        return web.done(request, "audit", "verified")

    return [
        Route("/audit", web.page(page)),
        Route("/audit/live", web.page(updates)),
        Route("/audit/verify", web.action(check), methods=["POST"]),
    ]
