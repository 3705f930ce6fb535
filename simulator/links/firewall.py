"""Firewall-like constraints on a link.

A :class:`FirewallSpec` models what sites put between DICOM nodes:

- ``rules``: allow or deny by source node and by calling and called AE
  title, first match wins, else ``default``. ``source`` is the node on the
  link's ``from`` side, which the proxy passes as ``source_node``. A rule
  on AE titles needs the A-ASSOCIATE-RQ. So the proxy reads the client's
  first PDU and keeps it back until the PDU is complete, before it
  connects upstream. An allowed connection then goes upstream with those
  bytes first. A
  denied one is closed with a FIN, and nothing reaches the server, not
  even a TCP connection. This models a DICOM-aware firewall (an
  application-level gateway) that ends the client's TCP connection
  itself; a packet filter would have let the TCP handshake through. A
  connection whose first PDU is not an A-ASSOCIATE-RQ matches no AE rule.
  Rules that do not need AE titles are decided when the connection is
  accepted. NOTE: no timeout bounds the wait for the first PDU, so a
  client that sends part of one and then waits is held until it closes
  or the link stops.
- ``idle_timeout_s``: after that long without bytes in either direction,
  the connection is black-holed, as stateful firewalls do when they drop
  a connection from their table: bytes from both sides are dropped, FINs
  are not passed on, and nothing answers. The proxy's TCP stack still
  acknowledges what it reads, so the senders' windows do not fill.
  NOTE: once both peers have sent a FIN, the proxy closes its sockets,
  and a peer that had only half-closed then gets a FIN.
- ``blackhole_after_bytes``: after that many bytes upstream the far side
  stops reading. The proxy forwards exactly that many bytes, then stops
  reading from the client, so the client's TCP window fills and its sends
  block. Downstream bytes still flow. The proxy closes the connection once
  the server has closed its side.
- ``max_connections``: connections beyond that many open ones are closed
  at once, before the proxy connects upstream. A client that has already
  sent bytes may get an RST rather than the FIN, because its bytes are
  unread when the proxy closes the socket.
- ``max_objects_per_s``: the rate of C-STORE-RQ commands upstream. A
  command over the rate waits before it is forwarded (a token bucket that
  holds one token), so commands are at least ``1 / max_objects_per_s``
  seconds apart.

Every decision is recorded: ``link.firewall_denied`` with the rule (a rule's
name, ``rule N`` counting from 1, ``default`` or ``max_connections``),
``link.firewall_allowed``, ``link.firewall_blackholed``,
``link.firewall_throttled`` and ``link.firewall_set``.

:meth:`Firewall.replace` applies to connections opened afterwards; open
connections keep the spec they were opened with, as established
connections keep their state in a stateful firewall.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simulator.links.pdu import AssociateRQ, DimseCommand, PDUReader
from simulator.links.stages import DIRECTIONS, Direction, Forward, Stage, StageContext
from simulator.recording.recorder import BoundRecorder

Action = Literal["allow", "deny"]


class FirewallRule(BaseModel):
    """One rule; it matches when every condition given matches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action
    source: str | None = Field(default=None, description="Node on the link's from side.")
    calling_ae: str | None = Field(default=None, min_length=1, max_length=16)
    called_ae: str | None = Field(default=None, min_length=1, max_length=16)
    name: str | None = Field(default=None, description="Name used in events; defaults to 'rule N'.")

    @property
    def needs_associate_rq(self) -> bool:
        return self.calling_ae is not None or self.called_ae is not None


class FirewallSpec(BaseModel):
    """The firewall of one link. AE titles compare without padding spaces, case-sensitively."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[FirewallRule, ...] = ()
    default: Action = "allow"
    idle_timeout_s: float | None = Field(default=None, gt=0)
    blackhole_after_bytes: int | None = Field(default=None, ge=0)
    max_connections: int | None = Field(default=None, ge=0)
    max_objects_per_s: float | None = Field(default=None, gt=0)


class _Unknown:
    """Marker for an A-ASSOCIATE-RQ that has not arrived yet."""


_NOT_YET = _Unknown()


def _evaluate(
    spec: FirewallSpec, source: str | None, rq: AssociateRQ | _Unknown | None
) -> tuple[Action | None, str]:
    """Return the action and the rule that decides, or None when an AE rule needs the RQ first."""
    for index, rule in enumerate(spec.rules):
        label = rule.name or f"rule {index + 1}"
        if rule.source is not None and rule.source != source:
            continue
        if rule.needs_associate_rq:
            if isinstance(rq, _Unknown):
                return None, label
            if rq is None:
                continue
            if rule.calling_ae is not None and rule.calling_ae.strip() != rq.calling_ae:
                continue
            if rule.called_ae is not None and rule.called_ae.strip() != rq.called_ae:
                continue

        return rule.action, label

    return spec.default, "default"


class Firewall:
    """The firewall of the link ``link_name``; ``spec`` None lets everything through."""

    def __init__(self, link_name: str, spec: FirewallSpec | None, recorder: BoundRecorder) -> None:
        self.link_name = link_name
        self._spec = spec
        self._recorder = recorder.bind(link=link_name)
        self._open_connections = 0
        if spec is not None:
            self._recorder.emit("link.firewall_set", firewall=spec.model_dump())

    @property
    def spec(self) -> FirewallSpec | None:
        return self._spec

    def replace(self, spec: FirewallSpec | None) -> None:
        """Use ``spec`` for connections opened from now on; None removes the firewall."""
        self._spec = spec
        self._recorder.emit(
            "link.firewall_set", firewall=None if spec is None else spec.model_dump()
        )

    def open_connection(
        self, conn_id: int, source: str | None, recorder: BoundRecorder
    ) -> FirewallConnection | None:
        """Admit a new connection, or record why not and return None; the proxy then closes it."""
        spec = self._spec
        if spec is None:
            return FirewallConnection(self, None, source, recorder, "allow", None)

        if spec.max_connections is not None and self._open_connections >= spec.max_connections:
            recorder.emit(
                "link.firewall_denied",
                rule="max_connections",
                at="accept",
                source=source,
                max_connections=spec.max_connections,
                open_connections=self._open_connections,
            )
            return None

        action, rule = _evaluate(spec, source, _NOT_YET)
        if action == "deny":
            recorder.emit("link.firewall_denied", rule=rule, at="accept", source=source)
            return None

        self._open_connections += 1
        connection = FirewallConnection(self, spec, source, recorder, action, rule)
        if action == "allow" and spec.rules:
            recorder.emit("link.firewall_allowed", rule=rule, at="accept", source=source)

        return connection

    def _release(self) -> None:
        self._open_connections -= 1


class FirewallConnection:
    """The firewall's view of one connection: its verdict and the stages that enforce the limits.

    ``verdict`` is None until :meth:`inspect` has read the A-ASSOCIATE-RQ.
    """

    def __init__(
        self,
        firewall: Firewall,
        spec: FirewallSpec | None,
        source: str | None,
        recorder: BoundRecorder,
        verdict: Action | None,
        rule: str | None,
    ) -> None:
        self.verdict = verdict
        self.rule = rule
        self.blackholed = False
        self._firewall = firewall
        self._spec = spec
        self._source = source
        self._recorder = recorder
        self._counted = spec is not None
        self._contexts: dict[Direction, StageContext] = {}
        self._bytes_passed = 0
        self._stalled = False
        self._pacer: _CommandPacer | None = None
        if spec is not None and spec.max_objects_per_s is not None:
            self._pacer = _CommandPacer(spec.max_objects_per_s)
        self.stages: dict[Direction, list[Stage]] = {direction: [] for direction in DIRECTIONS}
        if spec is None:
            return

        # Idle tracking needs both directions; the byte and object limits act upstream only.
        if spec.idle_timeout_s is not None:
            self.stages["downstream"].append(_FirewallStage(self, "downstream"))
        limits = (spec.idle_timeout_s, spec.blackhole_after_bytes, spec.max_objects_per_s)
        if any(limit is not None for limit in limits):
            self.stages["upstream"].append(_FirewallStage(self, "upstream"))

    async def inspect(self, reader: asyncio.StreamReader, chunk_size: int) -> bytes:
        """Read the client's first PDU, decide on it and return the bytes read, to forward first."""
        assert self._spec is not None
        framer = PDUReader()
        received = bytearray()
        first: object = None
        while first is None:
            try:
                chunk = await reader.read(chunk_size)
            except OSError:
                chunk = b""
            if not chunk:
                break
            received += chunk
            results = framer.feed(chunk)
            if results:
                first = results[0]
        rq = first if isinstance(first, AssociateRQ) else None
        self.verdict, self.rule = _evaluate(self._spec, self._source, rq)
        fields: dict[str, Any] = {
            "rule": self.rule,
            "at": "associate_rq",
            "source": self._source,
            "calling_ae": None if rq is None else rq.calling_ae,
            "called_ae": None if rq is None else rq.called_ae,
        }
        kind = "link.firewall_denied" if self.verdict == "deny" else "link.firewall_allowed"
        self._recorder.emit(kind, **fields)

        return bytes(received)

    def release(self) -> None:
        """Free the connection's place under max_connections; the proxy calls this at the end."""
        if self._counted:
            self._counted = False
            self._firewall._release()

    def attach(self, ctx: StageContext) -> None:
        self._contexts[ctx.direction] = ctx
        assert self._spec is not None
        if ctx.direction == "upstream" and self._spec.idle_timeout_s is not None:
            ctx.call_later(self._spec.idle_timeout_s, self._check_idle)

    async def forward_upstream(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        """Pass on upstream bytes under blackhole_after_bytes and max_objects_per_s."""
        assert self._spec is not None
        if self._stalled:
            return

        limit = self._spec.blackhole_after_bytes
        stall = limit is not None and self._bytes_passed + len(chunk) >= limit
        if limit is not None:
            chunk = chunk[: limit - self._bytes_passed]
        if self._pacer is not None:
            await self._pacer.forward(chunk, ctx, forward)
        elif chunk:
            await forward(chunk)
        self._bytes_passed += len(chunk)
        if stall:
            self._stalled = True
            ctx.pause_reading()
            ctx.recorder.emit(
                "link.firewall_blackholed", trigger="bytes", direction="upstream", bytes=limit
            )

    def _check_idle(self) -> None:
        assert self._spec is not None and self._spec.idle_timeout_s is not None
        timeout_s = self._spec.idle_timeout_s
        upstream = self._contexts["upstream"]
        last_read_s = max(ctx.last_read_s for ctx in self._contexts.values())
        idle_s = time.monotonic() - last_read_s
        if idle_s < timeout_s:
            upstream.call_later(timeout_s - idle_s, self._check_idle)
            return

        self.blackholed = True
        upstream.blackhole()
        upstream.recorder.emit(
            "link.firewall_blackholed",
            trigger="idle",
            idle_s=round(idle_s, 3),
            idle_timeout_s=timeout_s,
        )


class _FirewallStage(Stage):
    """The firewall's stage in one direction of one connection."""

    name = "firewall"

    def __init__(self, connection: FirewallConnection, direction: Direction) -> None:
        self._connection = connection
        self._direction = direction

    def attach(self, ctx: StageContext) -> None:
        self._connection.attach(ctx)

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        if self._connection.blackholed:
            return

        if self._direction == "upstream":
            await self._connection.forward_upstream(chunk, ctx, forward)
        else:
            await forward(chunk)


class _CommandPacer:
    """Spaces C-STORE-RQ commands at least ``1 / max_per_s`` seconds apart."""

    def __init__(self, max_per_s: float) -> None:
        self._max_per_s = max_per_s
        self._next_s = 0.0
        self._framer = PDUReader()
        self._stream_offset = 0

    async def forward(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        """Forward ``chunk``, waiting before each PDU that completes a C-STORE-RQ command."""
        start = self._stream_offset
        self._stream_offset += len(chunk)
        results = [] if self._framer.stopped else self._framer.feed(chunk)
        position = 0
        for result in results:
            if not isinstance(result, DimseCommand) or result.command != "C-STORE-RQ":
                continue
            # The command's PDU may have begun in an earlier chunk, already forwarded.
            cut = max(result.stream_offset - start, position)
            if cut > position:
                await forward(chunk[position:cut])
                position = cut
            await self._wait_turn(ctx, result)
        if position < len(chunk):
            await forward(chunk[position:])

    async def _wait_turn(self, ctx: StageContext, command: DimseCommand) -> None:
        now = time.monotonic()
        wait_s = self._next_s - now
        self._next_s = max(now, self._next_s) + 1 / self._max_per_s
        if wait_s <= 0:
            return

        ctx.recorder.emit(
            "link.firewall_throttled",
            message_id=command.message_id,
            delay_s=round(wait_s, 3),
            max_objects_per_s=self._max_per_s,
        )
        await asyncio.sleep(wait_s)
