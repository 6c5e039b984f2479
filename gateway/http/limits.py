"""The HTTP server's bounds on connections (gateway.yaml `http`): keep-alive, request-head timeout, connection cap.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) and answers
503 to requests beyond `limit_concurrency`, but it never times out a request
head that is not finished: a client that connects and sends half a request
line holds its connection (and a slot of the cap) forever. `head_timeout` adds
that bound at the protocol level, below ASGI, for both of uvicorn's HTTP/1.1
implementations: from the moment a connection opens, or its first byte after
an idle keep-alive, the whole request head must arrive within the timeout or
the connection is closed. A request whose head arrived is the app's to serve.

The head's size is bounded too: h11 refuses an incomplete head over 16 KiB
(`h11_max_incomplete_event_size`), httptools buffers any amount; the mixin
applies h11's bound to both, so the limit does not depend on which is installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config.files import HttpSettings

MAX_HEAD_BYTES = 16 * 1024  # h11's default bound on an incomplete request head, applied to httptools as well


class _HeadTimeout:
    """Mixed into a uvicorn HTTP protocol: close a connection whose request head does not arrive in time,
    or grows past `MAX_HEAD_BYTES` before it is complete."""

    header_timeout: float
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    # Provided by the uvicorn protocol this is mixed into.
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        waiting = not self._serving()
        super().data_received(data)  # type: ignore[misc]
        if self._serving():
            self._head_bytes = 0
        elif waiting:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.transport.close()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _serving(self) -> bool:
        """A request is under way: its response is not complete, or its body is still arriving (the bytes
        of a body the app answered early, e.g. 413 for an oversized one, are no request head)."""
        return self.cycle is not None and (not self.cycle.response_complete or self.cycle.more_body)

    def _watch_head(self) -> None:
        """Waiting for a head (a new connection, or bytes of the next request): the timer runs; serving: it stops.

        An idle keep-alive connection is left to uvicorn's keep-alive timeout, which stops when bytes arrive.
        """
        if self._serving():
            self._stop_head_timer()
        elif self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._serving() and not self.transport.is_closing():
            self.transport.close()


def head_timeout(protocol: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """`protocol` (a uvicorn HTTP protocol class) with a request-head timeout of `seconds`."""
    return type(f"HeadTimeout{protocol.__name__}", (_HeadTimeout, protocol), {"header_timeout": seconds})


def server_options(settings: HttpSettings, *, fast: bool | None = None) -> dict[str, Any]:
    """uvicorn.Config keyword arguments that apply `settings` (and pick httptools when `fast` and installed).

    uvicorn refuses a request when the open connections (this one included) or requests in flight reach
    `limit_concurrency`, so the cap is one above `max_connections`: that many connections are served.
    """
    if fast is None:
        fast = importlib.util.find_spec("httptools") is not None
    protocol: type[asyncio.Protocol] = H11Protocol
    if fast:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        protocol = HttpToolsProtocol
    return {
        "http": head_timeout(protocol, settings.header_timeout),
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": max(1, math.ceil(settings.keep_alive)),  # uvicorn takes whole seconds
        "limit_concurrency": settings.max_connections + 1,
        # uvicorn believes X-Forwarded-* from 127.0.0.1 by default: any local client could forge its address
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": settings.trusted_proxies or None,  # uvicorn takes the list as it is
    }
