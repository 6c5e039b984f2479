"""Client ID Metadata Documents: a client_id that is an https URL names its own metadata.

A document is fetched only from a URL matching a `clients.metadata_documents` glob; its host must
resolve to public addresses, unless a glob names that host literally (no wildcard in its host), which
is how a private or loopback host is allowed on purpose. The address actually connected to is checked
again before the body is read, so a DNS answer that changes between the check and the connection
(rebinding) is refused too. No redirect is followed; the fetch is bounded in time and size; the
document's `client_id` must equal its URL. Documents are reused per their Cache-Control max-age
(bounded by `fetch.max_cache`; `fetch.default_cache` without one; never with no-store).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2 as httpx

from gateway.config.files import ClientsSettings

_CACHE_SIZE = 1000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


class ClientRefused(Exception):
    """The client cannot be used; `reason` is fit for the audit record and the error page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ClientMetadata:
    client_id: str
    client_name: str | None
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str
    client_uri: str | None = None


def is_metadata_url(client_id: str) -> bool:
    """A client_id that names a metadata document: an https URL with a path."""
    parts = urlsplit(client_id)
    return parts.scheme == "https" and bool(parts.hostname) and parts.path not in ("", "/")


def parse_metadata(document: Any, client_id: str) -> ClientMetadata:
    """A metadata document (or registration), checked: `client_id` as expected, usable redirect URIs.

    Raises:
        ClientRefused: naming the field that is wrong.
    """
    if not isinstance(document, dict):
        raise ClientRefused("the client metadata is not a JSON object")
    if document.get("client_id") != client_id:
        raise ClientRefused("the metadata document's client_id is not its own URL")
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and valid_redirect_uri(u) for u in uris):
        raise ClientRefused("redirect_uris must be a non-empty list of absolute URIs without fragments")
    name = document.get("client_name")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise ClientRefused("only public clients (token_endpoint_auth_method none) may use a metadata document")
    uri = document.get("client_uri")
    return ClientMetadata(
        client_id,
        name[:200] if isinstance(name, str) and name else None,
        tuple(uris),
        method,
        uri if isinstance(uri, str) else None,
    )


def valid_redirect_uri(uri: str) -> bool:
    """An absolute URI without a fragment: https, http on a loopback host, or a private-use scheme (RFC 8252)."""
    if len(uri) > 2000 or any(c.isspace() or ord(c) < 0x20 for c in uri):
        return False
    parts = urlsplit(uri)
    if parts.fragment or not parts.scheme:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme == "http":
        return parts.hostname in ("localhost", "127.0.0.1", "::1")
    return "." in parts.scheme or parts.scheme in ("vscode", "cursor", "windsurf", "claude")  # private-use schemes


def _host_named(globs: tuple[str, ...], url: str, host: str) -> bool:
    """Whether a glob this URL matches names its host literally (which allows a private address)."""
    for glob in globs:
        glob_host = urlsplit(glob).hostname or ""
        if fnmatch.fnmatchcase(url, glob) and not any(c in glob_host for c in "*?[") and glob_host == host:
            return True
    return False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class MetadataFetcher:
    """Fetches and caches metadata documents within `clients` settings."""

    def __init__(self, settings: ClientsSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._cache: dict[str, tuple[float, ClientMetadata]] = {}
        verify: ssl.SSLContext | bool = True
        if settings.fetch.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.fetch.ca_file))
        self._http = httpx.AsyncClient(
            follow_redirects=False, verify=verify, trust_env=False, timeout=settings.fetch.timeout
        )

    async def close(self) -> None:
        await self._http.aclose()

    def trusted(self, url: str) -> bool:
        return any(fnmatch.fnmatchcase(url, glob) for glob in self.settings.metadata_documents)

    async def get(self, url: str) -> tuple[ClientMetadata, bool]:
        """(metadata, fetched now) for a client_id URL.

        Raises:
            ClientRefused: outside the trust globs, a private address not named, a redirect, too large,
                too slow, not JSON, or not this client's document.
        """
        cached = self._cache.get(url)
        now = self.clock()
        if cached is not None and now < cached[0]:
            return cached[1], False
        if not is_metadata_url(url) or urlsplit(url).fragment or "@" in urlsplit(url).netloc:
            raise ClientRefused("client_id is not an https URL with a path")
        if not self.trusted(url):
            raise ClientRefused("the metadata document URL matches no clients.metadata_documents glob")
        host = urlsplit(url).hostname or ""
        named = _host_named(self.settings.metadata_documents, url, host)
        try:
            with anyio.fail_after(self.settings.fetch.timeout):
                await self._check_addresses(host, urlsplit(url).port or 443, named)
                body, cache_control = await self._fetch(url, named)
        except TimeoutError:
            raise ClientRefused(
                f"fetching the metadata document took longer than {self.settings.fetch.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ClientRefused(f"the metadata document could not be fetched: {type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise ClientRefused("the metadata document is not JSON") from None
        metadata = parse_metadata(document, url)
        lifetime = self._lifetime(cache_control)
        if lifetime > 0:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[url] = (now + lifetime, metadata)
        return metadata, True

    async def _check_addresses(self, host: str, port: int, named: bool) -> None:
        try:
            infos = await anyio.getaddrinfo(host, port, type=0)
        except OSError:
            raise ClientRefused(f"the metadata document host {host!r} does not resolve") from None
        for info in infos:
            if not named and not _public(str(info[4][0])):
                raise ClientRefused(
                    f"the metadata document host {host!r} resolves to a private or loopback "
                    "address, and no clients.metadata_documents glob names it"
                )

    async def _fetch(self, url: str, named: bool) -> tuple[bytes, str]:
        limit = self.settings.fetch.max_bytes
        async with self._http.stream("GET", url, headers={"accept": "application/json"}) as response:
            stream = response.extensions.get("network_stream")
            peer = stream.get_extra_info("server_addr") if stream is not None else None
            if not named and (peer is None or not _public(str(peer[0]))):
                raise ClientRefused("the metadata document host connected to a private or loopback address")
            if 300 <= response.status_code < 400:
                raise ClientRefused("the metadata document URL redirects; redirects are not followed")
            if response.status_code != 200:
                raise ClientRefused(f"the metadata document URL answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ClientRefused(f"the metadata document is larger than {limit} bytes")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ClientRefused(f"the metadata document is larger than {limit} bytes")
            return body, response.headers.get("cache-control", "")

    def _lifetime(self, cache_control: str) -> float:
        directives = cache_control.lower()
        if "no-store" in directives or "no-cache" in directives:
            return 0.0
        match = _MAX_AGE.search(cache_control)
        if match is None:
            return self.settings.fetch.default_cache
        return min(float(match.group(1)), self.settings.fetch.max_cache)
