"""HTTP/1.1 for the lean tools/call path of a streamable-HTTP upstream: kept-alive connections and one reply's parse.

`Pool` keeps connections to one origin (TCP, or TLS with httpx2's own default context: the same trust and
verification as the SDK path's client), hands back an idle one unless it has idled past `IDLE_SECONDS` or
the server has closed it meanwhile (a non-blocking peek, as httpcore checks its idle connections), and
opens at most `MAX_OPEN` at once (beyond that the caller declines and the SDK path's pool waits its turn).
`Reply` feeds what a connection reads to httptools' parser (llhttp, as uvicorn's `httptools` server uses):
status, headers, and the body as it arrives, chunked or not.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from urllib.parse import SplitResult

import anyio
import anyio.abc
import httptools
from httpx2 import create_ssl_context

from gateway.upstream.http_client import CONNECT_TIMEOUT

IDLE_SECONDS = 4.0  # under Node's 5 s keep-alive timeout, so a server never closes a connection as it is reused
MAX_IDLE = 20  # as httpx's default pool
MAX_OPEN = 100


class Pool:
    """Connections to the origin of `url`; `close()` ends them all."""

    def __init__(self, url: SplitResult) -> None:
        tls = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if tls else 80)
        self._ssl: ssl.SSLContext | None = create_ssl_context() if tls else None
        self._idle: list[tuple[anyio.abc.ByteStream, float]] = []
        self._sockets: dict[anyio.abc.ByteStream, socket.socket | None] = {}  # looked up once: `extra` builds a dict
        self.open = 0
        self._closed = False

    def full(self) -> bool:
        return self.open >= MAX_OPEN and not self._idle

    async def take(self) -> anyio.abc.ByteStream:
        """A connection: an idle one if one can be reused, else a new one.

        Raises:
            OSError: the origin cannot be reached (within the SDK client's connect timeout).
        """
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_SECONDS and not _readable(self._sockets[stream]):
                return stream
            await self.drop(stream)
        self.open += 1
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                if self._ssl is None:
                    fresh: anyio.abc.ByteStream = await anyio.connect_tcp(self._host, self._port)
                else:
                    fresh = await anyio.connect_tcp(
                        self._host, self._port, ssl_context=self._ssl, tls_hostname=self._host
                    )
        except TimeoutError as exc:
            self.open -= 1
            raise OSError(f"connecting to {self._host}:{self._port} timed out") from exc
        except BaseException:
            self.open -= 1
            raise
        self._sockets[fresh] = fresh.extra(anyio.abc.SocketAttribute.raw_socket, None)
        return fresh

    def give_back(self, stream: anyio.abc.ByteStream) -> bool:
        """Keep `stream` for the next request; False when enough are idle already (then drop it)."""
        if self._closed or len(self._idle) >= MAX_IDLE:
            return False
        self._idle.append((stream, time.monotonic()))
        return True

    async def drop(self, stream: anyio.abc.ByteStream) -> None:
        self.open -= 1
        self._sockets.pop(stream, None)
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            await self.drop(self._idle.pop()[0])


def _readable(sock: socket.socket | None) -> bool:
    """True when an idle connection has something to read: the server closed it (or sent what it should not)."""
    if sock is None:
        return True
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


class Reply:
    """One HTTP response, parsed as it is fed (`feed`); the body's chunks wait in `body` for the reader."""

    __slots__ = ("_parser", "status", "headers", "body", "headers_done", "done", "keep_alive")

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.keep_alive = False

    def feed(self, data: bytes) -> None:
        """Raises: httptools.HttpParserError: not an HTTP/1.1 response."""
        self._parser.feed_data(data)

    def header(self, name: bytes) -> str:
        """The first value of header `name` (lower case), or ''."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()
