"""A TCP relay in front of the real PostgreSQL that can lose one reply: the fault a cut connection causes.

Everything passes through unchanged until `cut_reply_to(marker)` is armed. Then the first
client request carrying `marker` (a parameter value such as a call id) reaches the database
as usual, and the database's reply to it is thrown away and the connection closed: the
statement committed, the client never heard. PostgreSQL flushes a reply only at ReadyForQuery,
after the implicit transaction committed, so the reply's first bytes arrive after the commit.

The relay runs in a thread with its own event loop, so it keeps relaying while the test's loop
is blocked (the gateway loads keys from the store synchronously at startup).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import anyio.from_thread
from anyio.abc import SocketAttribute, SocketStream


@dataclass
class CuttingProxy:
    target: tuple[str, int]
    port: int = 0
    cut: threading.Event = field(default_factory=threading.Event)  # set once the armed reply was thrown away
    _armed: bytes | None = None
    _replies: dict[bytes, int] = field(default_factory=dict)  # marker -> replies delivered to requests carrying it
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def cut_reply_to(self, marker: bytes) -> None:
        with self._changed:
            self._armed = marker
            self._replies.setdefault(marker, 0)

    def wait_delivered(self, marker: bytes, count: int, timeout: float) -> bool:
        """Block until `count` replies to requests carrying `marker` reached the client (False on timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._replies.get(marker, 0) >= count, timeout)

    async def relay(self, client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(*self.target) as server:
            carrying: list[bytes] = []  # markers in the request whose reply comes next

            async def upstream() -> None:
                async for chunk in client:
                    with self._changed:
                        carrying.extend(m for m in self._replies if m in chunk)
                    await server.send(chunk)

            async def downstream() -> None:
                async for chunk in server:
                    with self._changed:
                        drop = self._armed is not None and self._armed in carrying
                        if drop:
                            self._armed = None
                        markers, carrying[:] = list(carrying), []
                    if drop:
                        self.cut.set()
                        tg.cancel_scope.cancel()  # drop the reply and close both sides
                        return
                    await client.send(chunk)
                    with self._changed:
                        for marker in markers:
                            self._replies[marker] += 1
                        self._changed.notify_all()

            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(upstream)
                    tg.start_soon(downstream)


@contextlib.contextmanager
def cutting_proxy(target: tuple[str, int] = ("127.0.0.1", 5432)) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target)
    with anyio.from_thread.start_blocking_portal() as portal:
        listener = portal.call(functools.partial(anyio.create_tcp_listener, local_host="127.0.0.1", local_port=0))
        proxy.port = listener.extra(SocketAttribute.local_port)
        serving = portal.start_task_soon(listener.serve, proxy.relay)
        try:
            yield proxy
        finally:
            serving.cancel()
            portal.call(listener.aclose)
