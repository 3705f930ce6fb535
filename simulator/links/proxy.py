"""In-process asyncio TCP proxy for one link between two nodes of a site.

Every accepted client connection gets its own upstream connection, opened
right away as Toxiproxy does. Bytes are forwarded as soon as they are read.
A copy goes through one :class:`~simulator.links.pdu.PDUReader` per
direction, which turns ACSE PDUs and DIMSE commands into ``link.pdu``
events. Directions are named as in Toxiproxy: ``upstream`` carries bytes
from the client to the server, ``downstream`` from the server to the client.

Faults and the firewall act through :class:`~simulator.links.stages.Stage`
objects, an ordered chain per direction that each chunk passes through
after the reader has seen it (see :mod:`simulator.links.stages`). With no
stage a chunk goes straight to the socket. For each new connection the
proxy asks its :class:`~simulator.links.faults.LinkFaults` and its
:class:`~simulator.links.firewall.Firewall` for the stages, and whether
to refuse the connection at once.

Exceptions: :class:`LinkError`, a :class:`~simulator.errors.SimulatorError`,
is the root of this package's errors. :class:`LinkStartError` is raised when
the listener cannot bind; it is also a :class:`~simulator.errors.RunError`.

The proxy emits no start and stop events of its own, because the runner
records those with the listen port and :attr:`LinkProxy.stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from random import Random
from typing import Literal

from simulator.errors import RunError, SimulatorError
from simulator.links.connection import (
    SINK_SIDES,
    SOURCE_SIDES,
    Connection,
    local_address,
    set_nodelay,
)
from simulator.links.faults import LinkFaults
from simulator.links.faults.dicom.middlebox_limit import middlebox_fault
from simulator.links.firewall import Firewall
from simulator.links.pdu import DimseCommand, PDataTF, PDUError, ReaderResult
from simulator.links.recording import PDURecording
from simulator.links.registry import AssociationRegistry
from simulator.links.stages import (
    DIRECTIONS,
    Direction,
    Forward,
    Stage,
    StageChain,
    StageContext,
    StageRunner,
)
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.recording.recorder import BoundRecorder

CHUNK_SIZE_BYTES = 256 * 1024
"""Maximum bytes read from a socket at once; also the stream reader's buffer limit."""

__all__ = [
    "CHUNK_SIZE_BYTES",
    "DIRECTIONS",
    "Direction",
    "Forward",
    "LinkError",
    "LinkProxy",
    "LinkStartError",
    "LinkStats",
    "Stage",
    "StageContext",
]



class LinkError(SimulatorError):
    """Root of the errors raised by the link proxy."""


class LinkStartError(LinkError, RunError):
    """The proxy could not listen on its host and port."""


@dataclass
class LinkStats:
    """Totals of one proxy since start. Byte counts are bytes read from the source side."""

    bytes_upstream: int = 0
    bytes_downstream: int = 0
    connections_total: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    """Connections closed at once because of a fault or the firewall."""
    upstream_connect_failures: int = 0


class LinkProxy:
    """TCP proxy for one link, recording what the DICOM peers send each other.

    ``connect_timeout_s`` bounds the upstream connect. ``faults`` and
    ``firewall`` default to none; ``source_node`` is the node on the link's
    ``from`` side, which firewall rules match as ``source``. Events carry
    ``link``, ``conn_id`` and, once known, ``assoc_id``.

    ``max_pdu_length`` is the proxy's own PDU limit as a middle box, in
    bytes of PDU-length, None for none. A longer PDU in either direction
    ends the connection as ``max_pdu_action`` says (``reset`` or ``abort``),
    recorded as ``link.pdu_over_middlebox_limit``; see
    :mod:`simulator.links.faults.dicom.middlebox_limit`.
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
        faults: LinkFaults | None = None,
        firewall: Firewall | None = None,
        source_node: str | None = None,
        max_pdu_length: int | None = None,
        max_pdu_action: Literal["reset", "abort"] = "reset",
        encrypted: bool = False,
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
        self.faults = faults if faults is not None else LinkFaults(name, 0, recorder)
        self.firewall = firewall if firewall is not None else Firewall(name, None, recorder)
        self.source_node = source_node
        # Both ends speak TLS: the bytes are records, not PDUs, so none are read.
        self.encrypted = encrypted
        self._middlebox_limit = (
            None if max_pdu_length is None else middlebox_fault(max_pdu_length, max_pdu_action)
        )
        self._stages: dict[str, tuple[Stage, ...]] = {direction: () for direction in DIRECTIONS}
        self._conn_ids = itertools.count(1)
        self._connections: set[Connection] = set()
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
        """Replace the link-wide stages of ``direction``, which run before each connection's own.

        Chunks that reach the stages from now on use the new chain, in open connections too.
        """
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
        connection = Connection(
            conn_id, client_reader, client_writer, self._recorder.bind(conn_id=conn_id), client_port
        )
        connection.link = self.name
        connection.failure_sink = lambda failure: self.registry.note_link_failure(
            client_port, failure
        )
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self._connections.add(connection)
        self.registry.drop_link_failure(client_port)
        try:
            if await self._admit(connection) and await self._connect_upstream(connection):
                await self._relay(connection)
                await self._close_gracefully(connection)
        except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the link
            # The pumps' TaskGroup wraps their errors; the first one is the cause.
            while isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            connection.note_close("proxy", "reset", f"proxy error: {exc!r}")
            connection.note_abnormal("proxy-error")
            connection.recorder.emit("link.proxy_error", error=type(exc).__name__, detail=str(exc))
            connection.reset()
        finally:
            self._connections.discard(connection)
            self.stats.connections_open -= 1
            self.faults.forget_connection(conn_id)
            if connection.firewall is not None:
                connection.firewall.release()
            self._finish(connection)

    async def _admit(self, connection: Connection) -> bool:
        """Draw the faults, ask the firewall and build the chains; close the client if refused."""
        fault_stages = self.faults.stages_for_connection(connection.conn_id)
        stages = [stage for direction in DIRECTIONS for stage in fault_stages[direction]]
        refusing = [stage for stage in stages if stage.refuses_connection]
        if refusing:
            connection.recorder.emit(
                "link.connection_refused_by_fault",
                fault=refusing[0].name,
                client_port=connection.client_port,
            )
            connection.note_failure(
                FailureKind.CONNECTION_REFUSED,
                f"link {self.name} is down (fault {refusing[0].name})",
                detail={"fault": refusing[0].name},
            )
            return self._refuse(connection)

        recorder = connection.recorder
        assoc_id = self.registry.lookup(connection.client_port)
        if assoc_id is not None:
            recorder = recorder.bind(assoc_id=assoc_id)
        guard = self.firewall.open_connection(connection.conn_id, self.source_node, recorder)
        if guard is None:
            connection.note_failure(
                FailureKind.CONNECTION_CLOSED,
                f"the firewall on link {self.name} denied the connection",
                detail={"cause": "firewall-denied"},
            )
            return self._refuse(connection)

        connection.firewall = guard
        connection.chains = {
            direction: StageChain([*guard.stages[direction], *fault_stages[direction]])
            for direction in DIRECTIONS
        }
        if self._middlebox_limit is not None:
            # The stage adds itself to the downstream chain when attached.
            limit = self._middlebox_limit
            limit_stage = limit.fault_type.build(limit, Random(0))
            upstream_stages = connection.chains["upstream"].stages
            connection.chains["upstream"] = StageChain([limit_stage, *upstream_stages])
        self.faults.track_connection(connection.conn_id, connection.chains)
        if guard.verdict is None:
            connection.inspected_bytes = await guard.inspect(
                connection.client_reader, CHUNK_SIZE_BYTES
            )
            if guard.verdict != "allow":
                connection.note_failure(
                    FailureKind.CONNECTION_CLOSED,
                    f"the firewall on link {self.name} denied the association by its AE titles",
                    detail={"cause": "firewall-denied"},
                )
                return self._refuse(connection)

        return True

    def _refuse(self, connection: Connection) -> bool:
        """Close a client connection that is not relayed, with a FIN; return False."""
        self.stats.connections_refused += 1
        writer = connection.client_writer
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
        writer.close()

        return False

    async def _connect_upstream(self, connection: Connection) -> bool:
        """Connect to the server; on failure record why and close the client."""
        set_nodelay(connection.client_writer)
        error: str | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.upstream_host,
                    self.upstream_port,
                    local_addr=local_address(self.upstream_host),
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

        set_nodelay(writer)
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

    def _record_connect_failure(self, connection: Connection, error: str, detail: str) -> None:
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

    def _bind_association(self, connection: Connection) -> None:
        """Find or make the association id and register the upstream port under it."""
        assoc_id = self.registry.lookup(connection.client_port)
        if assoc_id is None:
            assoc_id = self.registry.new_id(self.name)
        assert connection.upstream_port is not None
        self.registry.register(connection.upstream_port, assoc_id, link=self.name)
        connection.assoc_id = assoc_id
        connection.recorder = connection.recorder.bind(assoc_id=assoc_id)

    async def _relay(self, connection: Connection) -> None:
        recording = PDURecording(
            lambda kind, **fields: connection.recorder.emit(kind, **fields),
            note_failure=connection.note_failure,
        )
        connection.recording = recording
        connection.sender = lambda direction, data, after: self._send_after(
            connection, direction, data, after
        )
        for direction in DIRECTIONS:
            connection.pdu_readers[direction] = recording.reader(direction)
            if self.encrypted:
                connection.pdu_readers[direction].stopped = True
            connection.pdu_counts[direction] = Counter()
            connection.command_counts[direction] = Counter()
            connection.contexts[direction] = StageContext(self.name, connection, direction)
            connection.contexts[direction].chain = connection.chains[direction]
        upstream, downstream = (connection.contexts[d] for d in DIRECTIONS)
        upstream.reverse, downstream.reverse = downstream, upstream
        async with asyncio.TaskGroup() as pumps:
            connection.task_group = pumps
            for direction in DIRECTIONS:
                connection.chains[direction].start(connection.contexts[direction])
            inspected, connection.inspected_bytes = connection.inspected_bytes, b""
            if inspected and not await self._forward_chunk(connection, "upstream", inspected):
                return
            for direction in DIRECTIONS:
                pumps.create_task(
                    self._pump(connection, direction),
                    name=f"link {self.name} conn {connection.conn_id} {direction}",
                )

    async def _pump(self, connection: Connection, direction: Direction) -> None:
        """Forward one direction until its source closes, then half-close its sink."""
        source = connection.streams(direction)[0]
        eof_queued = False
        try:
            while direction not in connection.paused:
                try:
                    chunk = await source.read(CHUNK_SIZE_BYTES)
                except OSError as exc:
                    connection.on_reset(SOURCE_SIDES[direction], exc)
                    return
                if not chunk:
                    connection.note_close(SOURCE_SIDES[direction], "fin", None)
                    eof_queued = self._end_direction(connection, direction)
                    return
                if not await self._forward_chunk(connection, direction, chunk):
                    return

            # The firewall stopped reading this direction; the connection ends with the other one.
            await connection.wake_paused.wait()
        finally:
            connection.wake_paused.set()
            runner = connection.runners.get(direction)
            if runner is not None and not eof_queued:
                runner.stop()

    async def _forward_chunk(
        self, connection: Connection, direction: Direction, chunk: bytes
    ) -> bool:
        """Record a chunk read from the source and pass it on; return False if the sink failed."""
        if connection.assoc_id is None:
            self._bind_association(connection)
        connection.bytes_read[direction] += len(chunk)
        self._count_stats(direction, len(chunk))
        reader = connection.pdu_readers[direction]
        runner = self._stage_runner(connection, direction)
        if runner is not None:
            if not reader.stopped:
                self._record(connection, direction, reader.feed(chunk))
            await runner.put(chunk, connection.bytes_read[direction] - len(chunk))
            return True

        sink = connection.streams(direction)[1]
        try:
            sink.write(chunk)
            connection.bytes_written[direction] += len(chunk)
            # Parse after the write, so reading PDUs overlaps with the transfer
            # instead of adding to each exchange's latency. No other task runs
            # before the drain, so events keep the order of the bytes.
            if not reader.stopped:
                self._record(connection, direction, reader.feed(chunk))
            await sink.drain()
        except OSError as exc:
            connection.on_reset(SINK_SIDES[direction], exc)
            return False

        return True

    def _count_stats(self, direction: Direction, byte_count: int) -> None:
        if direction == "upstream":
            self.stats.bytes_upstream += byte_count
        else:
            self.stats.bytes_downstream += byte_count

    def _stage_runner(self, connection: Connection, direction: Direction) -> StageRunner | None:
        name = f"link {self.name} conn {connection.conn_id} {direction} stages"

        return connection.stage_runner(direction, self._stages, name)

    async def _send_after(
        self, connection: Connection, direction: Direction, data: bytes, after: Stage
    ) -> None:
        """Pass bytes that the stage ``after`` adds through the rest of the chain of ``direction``."""
        runner = self._stage_runner(connection, direction)
        if runner is not None:
            await runner.send_after(after, data)

    def _end_direction(self, connection: Connection, direction: Direction) -> bool:
        """Pass on the end of a direction; return True if it went to the stage runner."""
        runner = self._stage_runner(connection, direction)
        if runner is not None:
            runner.put_eof()
            return True

        connection.write_eof(connection.streams(direction)[1])

        return False

    def _record(
        self, connection: Connection, direction: Direction, results: list[ReaderResult]
    ) -> None:
        for result in results:
            if connection.recording is not None:
                connection.recording.observe(direction, result)
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

    async def _close_gracefully(self, connection: Connection) -> None:
        """Close both sockets after a clean end, letting buffered bytes go out first."""
        for writer in connection.writers():
            writer.close()
        for writer in connection.writers():
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _finish(self, connection: Connection) -> None:
        """Abort what is still open, forget the ports and record the close."""
        for context in connection.contexts.values():
            context.cancel_timers()
        for writer in connection.writers():
            if not writer.transport.is_closing():
                writer.transport.abort()
        if connection.assoc_id is not None:
            self.registry.forget(connection.client_port, connection.assoc_id)
            if connection.upstream_port is not None:
                self.registry.forget(connection.upstream_port, connection.assoc_id)
        if connection.server_writer is None:
            return

        summary: dict[str, object] = {}
        if connection.recording is not None:
            summary = connection.recording.finish(connection.close_kind)
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
            **summary,
        )
