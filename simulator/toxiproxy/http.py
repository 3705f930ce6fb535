"""A small HTTP/1.1 server on asyncio streams, enough for a JSON API on loopback.

It serves one request at a time per connection and keeps connections
alive as HTTP/1.1 does. It reads bodies by ``Content-Length`` only, and a
chunked request gets 411 Length Required, because the clients of
Toxiproxy's API (toxiproxy-python through requests, the Go client, curl)
send the length.
Handlers run on the server's event loop, so they may change state that
other tasks of that loop own without any lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 15.0
"""Time to read one request once its first byte came; Toxiproxy's API allows the same."""
IDLE_TIMEOUT_S = 60.0
"""Time a kept-alive connection may wait for its next request."""

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    segments: tuple[str, ...]
    """Path segments, percent-decoded: ``/proxies/a%2Fb`` gives ("proxies", "a/b")."""
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any,
             headers: dict[str, str] | None = None) -> HttpResponse:
        return cls(status, json.dumps(document).encode("utf-8") + b"\n", headers=headers or {})


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Serve ``handler`` on ``host``:``port`` (0 picks a free port) until :meth:`stop`."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen and return the bound port; OSError when the port cannot be bound."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  limit=MAX_REQUEST_LINE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

        return self.port

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer), name="http connection")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            keep_alive = True
            while keep_alive:
                try:
                    request = await self._read_request(reader)
                except _BadRequest as exc:
                    await _write(writer, _error(exc.status, str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                keep_alive = _wants_keep_alive(request)
                response = await self._respond(request)
                await _write(writer, response, keep_alive)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.handler(request)
        except Exception as exc:
            _LOGGER.exception("HTTP handler failed on %s %s", request.method, request.target)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def _read_request(self, reader: asyncio.StreamReader) -> HttpRequest | None:
        """Read one request; None when the client closed the connection between requests."""
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            line = await _read_line(reader)
        if not line:
            return None
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            method, target, version = _parse_request_line(line)
            headers = await _read_headers(reader)
            headers[":version"] = version
            body = await _read_body(reader, headers)
        path = urllib.parse.urlsplit(target).path
        segments = tuple(urllib.parse.unquote(s) for s in path.split("/") if s)

        return HttpRequest(method, target, segments, headers, body)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise _BadRequest(431, "request line or header line too long") from exc


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line; expected METHOD /path HTTP/1.1")

    return parts[0].upper(), parts[1], parts[2]


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise _BadRequest(400, f"malformed header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()

    raise _BadRequest(431, f"more than {MAX_HEADERS} header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    encoding = headers.get("transfer-encoding", "identity").lower()
    if encoding != "identity":
        raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(400, f"Content-Length {length_text!r} is not a number of bytes")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"request body of {length} bytes exceeds {MAX_BODY_BYTES} bytes")

    return await reader.readexactly(length)


def _wants_keep_alive(request: HttpRequest) -> bool:
    connection = request.headers.get("connection", "").lower()
    if request.headers.get(":version") == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _error(status: int, message: str) -> HttpResponse:
    return HttpResponse.json(status, {"error": message, "status": status})


async def _write(writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool) -> None:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    headers = {"Content-Length": str(len(response.body)),
               "Connection": "keep-alive" if keep_alive else "close", **response.headers}
    if response.body or response.status not in (204, 304):
        headers.setdefault("Content-Type", response.content_type)
    if response.status == 204:
        del headers["Content-Length"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
    await writer.drain()
