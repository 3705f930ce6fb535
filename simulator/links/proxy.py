"""In-process asyncio TCP proxy for one link between two nodes of a site.

Every accepted client connection gets its own upstream connection, opened
right away as Toxiproxy does. Bytes are forwarded as soon as they are read.
A copy goes through one :class:`~simulator.links.pdu.PDUReader` per
direction, which turns ACSE PDUs and DIMSE commands into ``link.pdu``
events. Directions are named as in Toxiproxy: ``upstream`` carries bytes
from the client to the server, ``downstream`` from the server to the client.

Faults plug in as :class:`Stage` objects, an ordered chain per direction
that each chunk passes through after the reader has seen it. With no stage
a chunk goes straight to the socket.

Exceptions: :class:`LinkError`, a :class:`~simulator.errors.SimulatorError`,
is the root of this package's errors. :class:`LinkStartError` is raised when
the listener cannot bind; it is also a :class:`~simulator.errors.RunError`.

The proxy emits no start and stop events of its own, because the runner
records those with the listen port and :attr:`LinkProxy.stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.errors import RunError, SimulatorError
from simulator.links.pdu import DimseCommand, PDataTF, PDUError, PDUReader, ReaderResult
from simulator.links.registry import AssociationRegistry
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.recording.recorder import BoundRecorder

CHUNK_SIZE_BYTES = 256 * 1024
"""Maximum bytes read from a socket at once; also the stream reader's buffer limit."""

Direction = Literal["upstream", "downstream"]
DIRECTIONS: tuple[Direction, Direction] = ("upstream", "downstream")
ConnectionSide = Literal["client", "server", "proxy"]
"""Values of ``closed_by``: the side whose close ended the connection."""
Forward = Callable[[bytes], Awaitable[None]]


class LinkError(SimulatorError):
    """Root of the errors raised by the link proxy."""


class LinkStartError(LinkError, RunError):
    """The proxy could not listen on its host and port."""


class Stage:
    """One fault in the chain of a direction; the base class passes bytes on unchanged.

    A stage receives every chunk in :meth:`process` and passes on what the
    next stage should see by awaiting ``forward`` zero or more times: once
    to pass the chunk on, never to drop it, and several times to split it.
    It may sleep before forwarding to add delay, or call
    :meth:`StageContext.close` to end the connection. Stage objects belong
    to the link and serve all its connections, so per-connection state goes
    in :attr:`StageContext.state`.
    """

    name = "pass-through"

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        await forward(chunk)

    async def finish(self, ctx: StageContext, forward: Forward) -> None:
        """Flush held bytes or delay when the source side has closed; runs before the half-close."""


@dataclass
class LinkStats:
    """Totals of one proxy since start. Byte counts are bytes read from the source side."""

    bytes_upstream: int = 0
    bytes_downstream: int = 0
    connections_total: int = 0
    connections_open: int = 0
    upstream_connect_failures: int = 0


@dataclass(eq=False)
class _Connection:
    """State of one client connection and its upstream connection."""

    conn_id: int
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    recorder: BoundRecorder
    client_port: int
    server_reader: asyncio.StreamReader | None = None
    server_writer: asyncio.StreamWriter | None = None
    upstream_port: int | None = None
    assoc_id: str | None = None
    closed_by: ConnectionSide | None = None
    close_kind: Literal["fin", "reset"] | None = None
    close_reason: str | None = None
    pdu_readers: dict[str, PDUReader] = field(default_factory=dict)
    bytes_read: Counter[str] = field(default_factory=Counter)
    bytes_written: Counter[str] = field(default_factory=Counter)
    pdu_counts: dict[str, Counter[str]] = field(default_factory=dict)
    command_counts: dict[str, Counter[str]] = field(default_factory=dict)
    contexts: dict[str, StageContext] = field(default_factory=dict)

    def note_close(
        self, side: ConnectionSide, kind: Literal["fin", "reset"], reason: str | None
    ) -> None:
        """Record which side closed first and how; later closes do not change it."""
        if self.closed_by is None:
            self.closed_by = side
            self.close_kind = kind
            self.close_reason = reason

    def streams(self, direction: Direction) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Return the source and the sink of ``direction``."""
        assert self.server_reader is not None and self.server_writer is not None
        if direction == "upstream":
            return self.client_reader, self.server_writer

        return self.server_reader, self.client_writer

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_writer, self.server_writer) if w is not None]

    def reset(self) -> None:
        """Reset both sockets, so that each peer gets an RST as the failing peer did."""
        for writer in self.writers():
            _reset(writer)


class StageContext:
    """The connection and direction a stage is working on."""

    def __init__(self, link: str, connection: _Connection, direction: Direction) -> None:
        self.link = link
        self.direction = direction
        self.stream_offset = 0
        """Bytes read in this direction before the current chunk."""
        self.state: dict[str, Any] = {}
        """Per-connection, per-direction state of the stages; each stage picks its own keys."""
        self._connection = connection

    @property
    def conn_id(self) -> int:
        return self._connection.conn_id

    @property
    def assoc_id(self) -> str | None:
        return self._connection.assoc_id

    @property
    def recorder(self) -> BoundRecorder:
        """Recorder bound to the link, the connection and, once known, the association."""
        return self._connection.recorder

    def close(self, reason: str, reset: bool = False) -> None:
        """End the connection on both sides, with an RST when ``reset`` is true, else a FIN."""
        self._connection.note_close("proxy", "reset" if reset else "fin", reason)
        if reset:
            self._connection.reset()
        else:
            for writer in self._connection.writers():
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a socket with an RST: SO_LINGER on with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    # Nagle's algorithm with delayed ACKs can hold back a small PDU such as A-RELEASE-RQ
    # for about 40 ms on Linux.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _local_address(host: str) -> tuple[str, int] | None:
    """Return the loopback address to bind an upstream socket to, or None for another host.

    A socket bound without SO_REUSEADDR gets a port that no other socket
    shares, which keeps it a unique key in the association registry.
    """
    if host == "localhost":
        return ("127.0.0.1", 0)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_loopback:
        return None

    return (str(address), 0)


class LinkProxy:
    """TCP proxy for one link, recording what the DICOM peers send each other.

    ``connect_timeout_s`` bounds the upstream connect. Events carry ``link``,
    ``conn_id`` and, once known, ``assoc_id``.
    """

    def __init__(
        self,
        name: str,
        upstream_host: str,
        upstream_port: int,
        recorder: BoundRecorder,
        registry: AssociationRegistry,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError(f"link {name}: connect_timeout_s must be > 0, not {connect_timeout_s}")
        self.name = name
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.connect_timeout_s = connect_timeout_s
        self.registry = registry
        self.stats = LinkStats()
        self._recorder = recorder.bind(link=name)
        self._stages: dict[str, tuple[Stage, ...]] = {direction: () for direction in DIRECTIONS}
        self._conn_ids = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._runner: asyncio.Task[None] | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._port is None:
            raise LinkError(f"link {self.name} has no port until start() returns")

        return self._port

    def stages(self, direction: Direction) -> tuple[Stage, ...]:
        return self._stages[self._check_direction(direction)]

    def set_stages(self, direction: Direction, stages: Sequence[Stage]) -> None:
        """Replace the fault chain of ``direction``; chunks read from now on use the new chain."""
        self._stages[self._check_direction(direction)] = tuple(stages)

    def _check_direction(self, direction: str) -> str:
        if direction not in DIRECTIONS:
            raise ValueError(
                f"link {self.name}: direction {direction!r} is not one of {DIRECTIONS}"
            )

        return direction

    async def start(self) -> None:
        """Listen and return once the port is bound; raise LinkStartError if it cannot be."""
        if self._runner is not None:
            raise LinkError(f"link {self.name} is already started")

        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(started), name=f"link {self.name}")
        await started

    async def stop(self) -> None:
        """Close the listener and every connection, then wait until all tasks have ended."""
        if self._runner is None:
            return

        runner, self._runner = self._runner, None
        runner.cancel()
        await asyncio.wait([runner])

    async def _run(self, started: asyncio.Future[None]) -> None:
        """Own the listener and, through a TaskGroup, every connection task."""
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                try:
                    server = await asyncio.start_server(
                        self._accept, self.listen_host, self.listen_port, limit=CHUNK_SIZE_BYTES
                    )
                except OSError as exc:
                    message = (
                        f"link {self.name} cannot listen on {self.listen_host}:{self.listen_port}: "
                        f"{exc.strerror or exc}; choose another listen_port or free this one"
                    )
                    started.set_exception(LinkStartError(message))
                    return

                self._port = server.sockets[0].getsockname()[1]
                started.set_result(None)
                await self._serve_until_cancelled(server)
        finally:
            if not started.done():
                started.cancel()

    async def _serve_until_cancelled(self, server: asyncio.Server) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            server.close()
            for connection in self._connections:
                connection.note_close("proxy", "fin", "link stopped")

    def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """Start a connection task; a plain callback, so the TaskGroup owns the task."""
        assert self._task_group is not None
        conn_id = next(self._conn_ids)
        serve = self._serve(conn_id, client_reader, client_writer)
        try:
            self._task_group.create_task(serve, name=f"link {self.name} conn {conn_id}")
        except RuntimeError:
            # The TaskGroup is shutting down because stop() was called.
            serve.close()
            client_writer.transport.abort()

    async def _serve(
        self, conn_id: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        client_port = client_writer.get_extra_info("peername")[1]
        connection = _Connection(
            conn_id, client_reader, client_writer, self._recorder.bind(conn_id=conn_id), client_port
        )
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self._connections.add(connection)
        self.registry.drop_link_failure(client_port)
        try:
            if await self._connect_upstream(connection):
                await self._relay(connection)
                await self._close_gracefully(connection)
        except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the link
            # The pumps' TaskGroup wraps their errors; the first one is the cause.
            while isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            connection.note_close("proxy", "reset", f"proxy error: {exc!r}")
            connection.recorder.emit("link.proxy_error", error=type(exc).__name__, detail=str(exc))
            connection.reset()
        finally:
            self._connections.discard(connection)
            self.stats.connections_open -= 1
            self._finish(connection)

    async def _connect_upstream(self, connection: _Connection) -> bool:
        """Connect to the server; on failure record why and close the client."""
        _set_nodelay(connection.client_writer)
        error: str | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.upstream_host,
                    self.upstream_port,
                    local_addr=_local_address(self.upstream_host),
                    limit=CHUNK_SIZE_BYTES,
                )
        except TimeoutError:
            error, detail = "connection-timeout", f"no connection after {self.connect_timeout_s} s"
        except ConnectionRefusedError as exc:
            error, detail = "connection-refused", str(exc)
        except OSError as exc:
            error, detail = exc.strerror or type(exc).__name__, str(exc)
        if error is not None:
            self._record_connect_failure(connection, error, detail)
            connection.client_writer.close()
            return False

        _set_nodelay(writer)
        connection.server_reader, connection.server_writer = reader, writer
        connection.upstream_port = writer.get_extra_info("sockname")[1]
        if self.registry.lookup(connection.client_port) is not None:
            self._bind_association(connection)
        connection.recorder.emit(
            "link.connection_opened",
            client_port=connection.client_port,
            upstream_port=connection.upstream_port,
        )

        return True

    def _record_connect_failure(self, connection: _Connection, error: str, detail: str) -> None:
        """Emit the failed upstream connect and note it for the client's classification.

        The event has an ``assoc_id`` only if the client registered its port
        in time; a refusal can come before a simulated SCU has registered.
        """
        self.stats.upstream_connect_failures += 1
        upstream = f"{self.upstream_host}:{self.upstream_port}"
        assoc_id = self.registry.lookup(connection.client_port)
        recorder = connection.recorder
        if assoc_id is not None:
            recorder = recorder.bind(assoc_id=assoc_id)
        recorder.emit(
            "link.upstream_connect_failed",
            client_port=connection.client_port,
            upstream=upstream,
            error=error,
            detail=detail,
        )
        kinds = {
            "connection-refused": FailureKind.CONNECTION_REFUSED,
            "connection-timeout": FailureKind.CONNECTION_TIMEOUT,
        }
        failure = Failure(
            kinds.get(error, FailureKind.CONNECTION_CLOSED),
            self.name,
            Side.ACCEPTOR,
            False,
            f"link {self.name} could not connect to {upstream}: {error}",
            {"upstream": upstream, "error": error, "detail": detail},
        )
        self.registry.note_link_failure(connection.client_port, failure)

    def _bind_association(self, connection: _Connection) -> None:
        """Find or make the association id and register the upstream port under it."""
        assoc_id = self.registry.lookup(connection.client_port)
        if assoc_id is None:
            assoc_id = self.registry.new_id(self.name)
        assert connection.upstream_port is not None
        self.registry.register(connection.upstream_port, assoc_id, link=self.name)
        connection.assoc_id = assoc_id
        connection.recorder = connection.recorder.bind(assoc_id=assoc_id)

    async def _relay(self, connection: _Connection) -> None:
        for direction in DIRECTIONS:
            connection.pdu_readers[direction] = PDUReader()
            connection.pdu_counts[direction] = Counter()
            connection.command_counts[direction] = Counter()
            connection.contexts[direction] = StageContext(self.name, connection, direction)
        async with asyncio.TaskGroup() as pumps:
            for direction in DIRECTIONS:
                pumps.create_task(
                    self._pump(connection, direction),
                    name=f"link {self.name} conn {connection.conn_id} {direction}",
                )

    async def _pump(self, connection: _Connection, direction: Direction) -> None:
        """Forward one direction until its source closes, then half-close its sink."""
        source, sink = connection.streams(direction)
        source_side: ConnectionSide = "client" if direction == "upstream" else "server"
        sink_side: ConnectionSide = "server" if direction == "upstream" else "client"
        reader = connection.pdu_readers[direction]
        while True:
            try:
                chunk = await source.read(CHUNK_SIZE_BYTES)
            except OSError as exc:
                self._on_reset(connection, source_side, exc)
                return
            if not chunk:
                connection.note_close(source_side, "fin", None)
                await self._half_close(connection, direction, sink)
                return

            if connection.assoc_id is None:
                self._bind_association(connection)
            connection.bytes_read[direction] += len(chunk)
            self._count_stats(direction, len(chunk))
            if not reader.stopped:
                self._record(connection, direction, reader.feed(chunk))
            try:
                stages = self._stages[direction]
                if stages:
                    await self._run_stages(connection, direction, sink, stages, chunk)
                else:
                    sink.write(chunk)
                    connection.bytes_written[direction] += len(chunk)
                    await sink.drain()
            except OSError as exc:
                self._on_reset(connection, sink_side, exc)
                return

    def _count_stats(self, direction: Direction, byte_count: int) -> None:
        if direction == "upstream":
            self.stats.bytes_upstream += byte_count
        else:
            self.stats.bytes_downstream += byte_count

    async def _run_stages(
        self,
        connection: _Connection,
        direction: Direction,
        sink: asyncio.StreamWriter,
        stages: tuple[Stage, ...],
        chunk: bytes,
    ) -> None:
        ctx = connection.contexts[direction]
        ctx.stream_offset = connection.bytes_read[direction] - len(chunk)
        await self._stage_forward(connection, direction, sink, stages, 0)(chunk)

    def _stage_forward(
        self,
        connection: _Connection,
        direction: Direction,
        sink: asyncio.StreamWriter,
        stages: tuple[Stage, ...],
        index: int,
    ) -> Forward:
        """Return the callable that hands a chunk to stage ``index``, or to the socket after the last."""
        ctx = connection.contexts[direction]

        async def forward(piece: bytes) -> None:
            if index < len(stages):
                next_forward = self._stage_forward(connection, direction, sink, stages, index + 1)
                await stages[index].process(piece, ctx, next_forward)
            elif connection.closed_by != "proxy":
                sink.write(piece)
                connection.bytes_written[direction] += len(piece)
                await sink.drain()

        return forward

    async def _half_close(
        self, connection: _Connection, direction: Direction, sink: asyncio.StreamWriter
    ) -> None:
        stages = self._stages[direction]
        ctx = connection.contexts[direction]
        for index, stage in enumerate(stages):
            await stage.finish(
                ctx, self._stage_forward(connection, direction, sink, stages, index + 1)
            )
        # The sink may already be closed after a reset or a stage's close().
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof() and not sink.transport.is_closing():
                sink.write_eof()

    def _on_reset(self, connection: _Connection, side: ConnectionSide, exc: OSError) -> None:
        connection.note_close(side, "reset", f"{type(exc).__name__}: {exc}")
        connection.reset()

    def _record(
        self, connection: _Connection, direction: Direction, results: list[ReaderResult]
    ) -> None:
        for result in results:
            if isinstance(result, PDUError):
                connection.recorder.emit(
                    "link.pdu_error", direction=direction, **result.to_fields()
                )
            elif isinstance(result, DimseCommand):
                connection.command_counts[direction][result.command] += 1
                connection.recorder.emit("link.pdu", direction=direction, **result.to_fields())
            else:
                connection.pdu_counts[direction][result.name] += 1
                if not isinstance(result, PDataTF):
                    connection.recorder.emit("link.pdu", direction=direction, **result.to_fields())

    async def _close_gracefully(self, connection: _Connection) -> None:
        """Close both sockets after a clean end, letting buffered bytes go out first."""
        for writer in connection.writers():
            writer.close()
        for writer in connection.writers():
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _finish(self, connection: _Connection) -> None:
        """Abort what is still open, forget the ports and record the close."""
        for writer in connection.writers():
            if not writer.transport.is_closing():
                writer.transport.abort()
        if connection.assoc_id is not None:
            self.registry.forget(connection.client_port, connection.assoc_id)
            if connection.upstream_port is not None:
                self.registry.forget(connection.upstream_port, connection.assoc_id)
        if connection.server_writer is None:
            return

        connection.recorder.emit(
            "link.connection_closed",
            client_port=connection.client_port,
            upstream_port=connection.upstream_port,
            closed_by=connection.closed_by or "proxy",
            close_kind=connection.close_kind or "fin",
            close_reason=connection.close_reason,
            bytes_read={d: connection.bytes_read[d] for d in DIRECTIONS},
            bytes_written={d: connection.bytes_written[d] for d in DIRECTIONS},
            pdus={direction: dict(counts) for direction, counts in connection.pdu_counts.items()},
            commands={d: dict(counts) for d, counts in connection.command_counts.items()},
        )
