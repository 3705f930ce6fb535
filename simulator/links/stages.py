"""Stage chains: where faults and firewall rules act on the bytes of a link.

Each direction of a connection through a :class:`~simulator.links.proxy.LinkProxy`
can have an ordered chain of :class:`Stage` objects. The chain is the
link-wide stages set with ``LinkProxy.set_stages``, followed by the
connection's own :class:`StageChain`: its firewall stages, then one stage
per fault in the order the faults were added.

A direction without stages forwards each chunk straight to the socket. A
direction with stages hands its chunks to a :class:`StageRunner`, a task
of its own that runs the chain, so the pump keeps reading while a stage
waits. This is how Toxiproxy works, where every toxic is a goroutine behind
a buffered channel: a latency fault delays bytes without limiting the rate.
At most :data:`MAX_QUEUED_BYTES` wait between the pump and the chain.
Beyond that the pump stops reading until the chain catches up, and the
sender's TCP window fills, much as with a real window. With a latency of
100 ms the rate therefore tops out near 8 MiB / 0.1 s = 80 MiB/s, an
estimate that leaves out the kernel's socket buffers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, Protocol

from simulator.recording.failures import FailureKind, Side
from simulator.recording.recorder import BoundRecorder

Direction = Literal["upstream", "downstream"]
DIRECTIONS: tuple[Direction, Direction] = ("upstream", "downstream")
Forward = Callable[[bytes], Awaitable[None]]

MAX_QUEUED_BYTES = 8 * 1024 * 1024
"""Bytes that may wait between the pump and the chain of one direction."""


class ConnectionControl(Protocol):
    """Operations that stages may apply to their connection, implemented by the proxy."""

    conn_id: int
    assoc_id: str | None
    recorder: BoundRecorder

    def close(self, reason: str, reset: bool = False) -> None: ...

    def blackhole(self) -> None: ...

    def pause_reading(self, direction: Direction) -> None: ...

    async def send(self, direction: Direction, data: bytes, after: Stage) -> None: ...

    def note_abnormal(self, reason: str) -> None: ...

    def note_failure(self, kind: FailureKind, reason: str, side: Side = ...,
                     detail: dict[str, Any] | None = None) -> None: ...

    async def wait_ended(self) -> None: ...


class Stage:
    """One step in the chain of a direction; the base class passes bytes on unchanged.

    A stage receives every chunk in :meth:`process` and passes on what the
    next stage should see by awaiting ``forward`` zero or more times: once
    to pass the chunk on, never to drop it, and several times to split it.
    It may sleep before forwarding to add delay, or call
    :meth:`StageContext.close` to end the connection.

    Link-wide stages (``LinkProxy.set_stages``) serve all connections of the
    link, so they keep per-connection state in :attr:`StageContext.state`.
    Stages of a :class:`StageChain` belong to one connection and may keep
    state in themselves. Only those get :meth:`attach` and :meth:`detach`.
    """

    name = "pass-through"
    refuses_connection = False
    """True for a stage that makes the proxy close new connections at once: a link that is down."""

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        await forward(chunk)

    async def finish(self, ctx: StageContext, forward: Forward) -> None:
        """Flush held bytes or delay when the source side has closed; runs before the half-close."""

    def attach(self, ctx: StageContext) -> None:
        """Start acting on a connection; called when the relay starts or when added to an open one."""

    def detach(self, ctx: StageContext) -> None:
        """Stop acting on a connection that stays open: cancel timers, release held bytes."""


class StageContext:
    """The connection and direction a stage is working on."""

    def __init__(self, link: str, connection: ConnectionControl, direction: Direction) -> None:
        self.link = link
        self.direction = direction
        self.stream_offset = 0
        """Bytes read in this direction before the chunk being processed."""
        self.read_time_s = 0.0
        """``time.monotonic()`` when the pump read the chunk being processed."""
        self.last_read_s = time.monotonic()
        """``time.monotonic()`` when the pump last read a chunk in this direction, or the start."""
        self.state: dict[str, Any] = {}
        """Per-connection state of link-wide stages in this direction; each picks its own keys."""
        self.reverse: StageContext | None = None
        """Context of the other direction of the connection, set by the proxy."""
        self.chain: StageChain | None = None
        """The connection's own chain of this direction, set by the proxy."""
        self._connection = connection
        self._timers: set[asyncio.TimerHandle] = set()

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

    def close(self, reason: str, reset: bool = False,
              fault: dict[str, str] | None = None) -> None:
        """End the connection on both sides, with an RST when ``reset`` is true, else a FIN.

        ``fault`` names the fault that ends it, for the failure the client will see.
        """
        # A stage that ends the connection is the cause of whatever the client sees next.
        self._connection.note_failure(
            FailureKind.CONNECTION_RESET if reset else FailureKind.CONNECTION_CLOSED,
            reason, detail={"direction": self.direction, **(fault or {})},
        )
        self._connection.close(reason, reset)

    def blackhole(self) -> None:
        """Drop every byte in both directions from now on, and pass on no FIN."""
        self._connection.blackhole()

    async def send(self, data: bytes, after: Stage) -> None:
        """Pass ``data`` in this direction to the stages after ``after``, then to the socket.

        A stage uses this to add bytes of its own, such as a PDU that
        answers the other direction. The caller picks a moment when the
        stages of this direction are not in the middle of a message.
        """
        await self._connection.send(self.direction, data, after)

    def note_failure(self, kind: FailureKind, reason: str, side: Side = Side.LINK,
                     detail: dict[str, Any] | None = None) -> None:
        """Record the failure this link causes on the connection (the first one is kept)."""
        self._connection.note_failure(kind, reason, side,
                                      {"direction": self.direction, **(detail or {})})

    def note_abnormal(self, reason: str) -> None:
        """Mark the connection as ending abnormally, so that its recent PDUs are recorded."""
        self._connection.note_abnormal(reason)

    async def wait_ended(self) -> None:
        """Wait until the proxy has reset or closed the connection's sockets."""
        await self._connection.wait_ended()

    def pause_reading(self) -> None:
        """Stop reading this direction for the rest of the connection, so the sender's window fills.

        The proxy closes the connection once the other direction has ended.
        """
        self._connection.pause_reading(self.direction)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Run ``callback`` after ``delay_s`` seconds unless the connection has ended by then."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(delay_s, fire)
        self._timers.add(handle)

        return handle

    def cancel_timers(self) -> None:
        """Cancel the callbacks still pending; the proxy calls this when the connection ends."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


class StageChain:
    """The stages of one direction of one connection; faults may change it while it is open."""

    def __init__(self, stages: Iterable[Stage] = ()) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)
        self._context: StageContext | None = None

    def start(self, context: StageContext) -> None:
        """Attach every stage to the connection, once the relay starts."""
        self._context = context
        for stage in self.stages:
            stage.attach(context)

    def add(self, stage: Stage) -> None:
        """Append ``stage``; it acts on chunks that the runner takes from now on."""
        self.stages = (*self.stages, stage)
        if self._context is not None:
            stage.attach(self._context)

    def remove(self, stage: Stage) -> None:
        """Take ``stage`` out of the chain, if it is in it."""
        if not any(item is stage for item in self.stages):
            return

        self.stages = tuple(item for item in self.stages if item is not stage)
        if self._context is not None:
            stage.detach(self._context)


def chain_forward(
    stages: tuple[Stage, ...], index: int, ctx: StageContext, deliver: Forward
) -> Forward:
    """Return the callable that hands a piece to ``stages[index]``, or ``deliver`` past the end."""
    if index >= len(stages):
        return deliver

    stage = stages[index]
    next_forward = chain_forward(stages, index + 1, ctx, deliver)

    async def forward(piece: bytes) -> None:
        await stage.process(piece, ctx, next_forward)

    return forward


class StageRunner:
    """The task that runs the chain of one direction, fed by the pump through a queue.

    ``stages`` returns the link-wide stages and the connection's chain at
    the moment a chunk is taken, so changes apply from the next chunk on.
    ``deliver`` writes a piece to the socket, ``end`` half-closes it, and
    ``on_sink_error`` handles an OSError from either; the runner then stops.
    """

    def __init__(
        self,
        ctx: StageContext,
        stages: Callable[[], tuple[tuple[Stage, ...], tuple[Stage, ...]]],
        deliver: Forward,
        end: Callable[[], None],
        on_sink_error: Callable[[OSError], None],
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.task: asyncio.Task[None] | None = None
        self._ctx = ctx
        self._stages = stages
        self._deliver = deliver
        self._end = end
        self._on_sink_error = on_sink_error
        self._max_queued_bytes = max_queued_bytes
        self._queue: asyncio.Queue[tuple[bytes, int, float] | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._space = asyncio.Event()
        self._space.set()
        self._done = False
        self._chain_key: tuple[tuple[Stage, ...], tuple[Stage, ...]] | None = None
        self._chain: tuple[Stage, ...] = ()
        self._first: Forward = deliver

    async def put(self, chunk: bytes, stream_offset: int) -> None:
        """Queue a chunk just read; wait while the queue is over its limit."""
        if self._done:
            # The sink failed and the connection is being reset, so nothing can be delivered.
            return

        now = time.monotonic()
        self._ctx.last_read_s = now
        self._queue.put_nowait((chunk, stream_offset, now))
        self._queued_bytes += len(chunk)
        if self._queued_bytes > self._max_queued_bytes:
            self._space.clear()
            await self._space.wait()

    def put_eof(self) -> None:
        """Queue the end of the stream: the runner finishes the stages, then half-closes."""
        self._queue.put_nowait(None)

    async def send_after(self, stage: Stage, data: bytes) -> None:
        """Pass ``data`` through the stages after ``stage``, or the whole chain if it is not in it."""
        self._forward()
        index = next((i for i, item in enumerate(self._chain) if item is stage), -1)
        await chain_forward(self._chain, index + 1, self._ctx, self._deliver)(data)

    def stop(self) -> None:
        """Cancel the runner without finishing the stages, after a reset or a stalled read."""
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    await self._finish()
                    return

                chunk, self._ctx.stream_offset, self._ctx.read_time_s = item
                self._queued_bytes -= len(chunk)
                if self._queued_bytes <= self._max_queued_bytes:
                    self._space.set()
                await self._forward()(chunk)
        except OSError as exc:
            self._on_sink_error(exc)
        finally:
            self._done = True
            self._space.set()

    def _forward(self) -> Forward:
        """Return the forward of the first stage, rebuilt only when a chain has changed."""
        key = self._stages()
        known = self._chain_key
        if known is None or key[0] is not known[0] or key[1] is not known[1]:
            self._chain_key = key
            self._chain = (*key[0], *key[1])
            self._first = chain_forward(self._chain, 0, self._ctx, self._deliver)

        return self._first

    async def _finish(self) -> None:
        self._forward()
        for index, stage in enumerate(self._chain):
            rest = chain_forward(self._chain, index + 1, self._ctx, self._deliver)
            await stage.finish(self._ctx, rest)
        self._end()
