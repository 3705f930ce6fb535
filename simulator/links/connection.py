"""State of one connection through a link proxy, and how its bytes reach the sockets.

A :class:`Connection` contains the client and upstream streams, the byte and
PDU counters, the stage chains and runners of both directions, and the
record of who closed first. Stages act on it through
:class:`~simulator.links.stages.ConnectionControl`: they close it,
black-hole it or stop reading one direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.links.firewall import FirewallConnection
from simulator.links.pdu import PDUReader
from simulator.links.recording import PDURecording
from simulator.links.stages import Direction, Forward, Stage, StageChain, StageContext, StageRunner
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.recording.recorder import BoundRecorder

ConnectionSide = Literal["client", "server", "proxy"]
"""Values of ``closed_by``: the side whose close ended the connection."""
SOURCE_SIDES: dict[Direction, ConnectionSide] = {"upstream": "client", "downstream": "server"}
SINK_SIDES: dict[Direction, ConnectionSide] = {"upstream": "server", "downstream": "client"}

LINGER_S = 2.0
"""Seconds a connection that the proxy closed waits for the peers' FINs before closing anyway."""


@dataclass(eq=False)
class Connection:
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
    chains: dict[Direction, StageChain] = field(default_factory=dict)
    runners: dict[Direction, StageRunner] = field(default_factory=dict)
    task_group: asyncio.TaskGroup | None = None
    firewall: FirewallConnection | None = None
    inspected_bytes: bytes = b""
    """Bytes the firewall read from the client while it inspected the first PDU."""
    blackholed: bool = False
    closing: bool = False
    """True once the proxy has closed the connection; bytes read after that are dropped."""
    paused: set[Direction] = field(default_factory=set)
    wake_paused: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a paused pump should end: the other direction ended or the proxy closed."""
    recording: PDURecording | None = None
    sender: Callable[[Direction, bytes, Stage], Awaitable[None]] | None = None
    """Passes bytes that a stage adds into a direction's chain; set once the relay starts."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the proxy has reset or closed both sockets."""
    link: str = ""
    failure: Failure | None = None
    """The first failure the link caused on this connection; the client's classification uses it."""
    failure_sink: Callable[[Failure], None] | None = None

    def note_failure(self, kind: FailureKind, reason: str, side: Side = Side.LINK,
                     detail: dict[str, Any] | None = None) -> None:
        """Keep the first failure the link itself caused, and pass it to the proxy's sink."""
        if self.failure is not None:
            return
        detail = detail or {}
        # A rejection the link injected is permanent as a peer's would be: by its result.
        permanent = kind in (FailureKind.TLS_MISMATCH, FailureKind.PDU_OVER_LIMIT) or (
            kind == FailureKind.ASSOCIATION_REJECTED and detail.get("result") == 1
        )
        self.failure = Failure(kind, self.link or None, side, permanent, reason, detail)
        self.recorder.emit("link.failure_noted", **self.failure.as_record())
        if self.failure_sink is not None:
            self.failure_sink(self.failure)

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
        self.ended.set()
        for writer in self.writers():
            _reset(writer)

    def close(self, reason: str, reset: bool = False) -> None:
        """End the connection as the proxy, with an RST when ``reset`` is true, else a FIN."""
        self.note_close("proxy", "reset" if reset else "fin", reason)
        self.closing = True
        self.wake_paused.set()
        self.ended.set()
        if reset:
            self.reset()
            return

        # Closing a socket that still has unread bytes sends an RST, and the peer's kernel then
        # drops what its application has not read yet, such as an A-ABORT just sent. So send
        # the FIN after the buffered bytes and keep reading until the peers close their sides.
        for writer in self.writers():
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()
        if self.contexts:
            next(iter(self.contexts.values())).call_later(LINGER_S, self._close_writers)
        else:
            self._close_writers()

    def _close_writers(self) -> None:
        for writer in self.writers():
            writer.close()

    def blackhole(self) -> None:
        """Drop all bytes from now on and pass on no FIN, as a firewall that lost its state does."""
        self.blackholed = True
        self.note_failure(
            FailureKind.CONNECTION_BLACKHOLED,
            "the link dropped the connection from its state: bytes vanish and nothing answers, "
            "so the sender waits for its own timeout",
        )

    def pause_reading(self, direction: Direction) -> None:
        self.paused.add(direction)

    async def send(self, direction: Direction, data: bytes, after: Stage) -> None:
        if self.sender is not None:
            await self.sender(direction, data, after)

    async def wait_ended(self) -> None:
        await self.ended.wait()

    def note_abnormal(self, reason: str) -> None:
        if self.recording is not None:
            self.recording.note_abnormal(reason)

    def stage_runner(
        self, direction: Direction, link_stages: Mapping[str, tuple[Stage, ...]], task_name: str
    ) -> StageRunner | None:
        """Return the stage runner of ``direction``, started on first need; None while no stages.

        ``link_stages`` is the proxy's live map of link-wide stages.
        """
        runner = self.runners.get(direction)
        chain = self.chains[direction]
        if runner is not None or not (link_stages[direction] or chain.stages):
            return runner

        assert self.task_group is not None
        sink = self.streams(direction)[1]
        runner = StageRunner(
            self.contexts[direction],
            lambda: (link_stages[direction], chain.stages),
            self._deliver(direction, sink),
            lambda: self.write_eof(sink),
            lambda exc: self.on_reset(SINK_SIDES[direction], exc),
        )
        self.runners[direction] = runner
        runner.task = self.task_group.create_task(runner.run(), name=task_name)

        return runner

    def _deliver(self, direction: Direction, sink: asyncio.StreamWriter) -> Forward:
        """Return the last step of a chain, which writes to the sink unless the proxy dropped it."""

        async def deliver(piece: bytes) -> None:
            if self.closing or self.blackholed:
                return
            sink.write(piece)
            self.bytes_written[direction] += len(piece)
            await sink.drain()

        return deliver

    def write_eof(self, sink: asyncio.StreamWriter) -> None:
        """Half-close the sink, unless a firewall black-holed the connection and drops FINs."""
        if self.blackholed:
            return

        # The sink may already be closed after a reset or a stage's close().
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof() and not sink.transport.is_closing():
                sink.write_eof()

    def on_reset(self, side: ConnectionSide, exc: OSError) -> None:
        """Record that ``side`` failed with ``exc`` and reset both sockets."""
        self.note_close(side, "reset", f"{type(exc).__name__}: {exc}")
        self.wake_paused.set()
        self.reset()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a socket with an RST: SO_LINGER on with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    # Nagle's algorithm with delayed ACKs can hold back a small PDU such as A-RELEASE-RQ
    # for about 40 ms on Linux.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def local_address(host: str) -> tuple[str, int] | None:
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
