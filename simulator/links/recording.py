"""PDU-level recording of one connection through a link.

The proxy makes one :class:`PDURecording` per connection and frames each
direction with the :class:`~simulator.links.pdu.PDUReader` that
:meth:`PDURecording.reader` returns. The recording then keeps, per direction:

* counts per PDU type and a histogram of PDU lengths in power-of-two
  buckets, where bucket ``b`` counts the PDUs with ``b <= length < 2b``;
* the headers of the last :data:`TRACE_LENGTH` PDUs (type, length, stream
  offset and monotonic time of arrival), dumped in a ``link.pdu_trace``
  event when the connection ends abnormally;
* the Maximum Length Received that each side advertised, and a
  ``link.pdu_oversize`` event for each P-DATA-TF PDU longer than the
  maximum that its receiver advertised.

Lengths are PDU-length fields: the bytes after the 6-byte PDU header,
which is also what the Maximum Length Received limits (PS3.8 annex D.1).
The requestor's maximum, from the A-ASSOCIATE-RQ, limits what the acceptor
sends (downstream), and the acceptor's, from the A-ASSOCIATE-AC, limits
what the requestor sends (upstream). A maximum of 0 means unlimited and
never flags a PDU.

A TLS record where a PDU should start gets its own ``link.tls_mismatch``
event, with the PDU-length that a DICOM peer would read from the TLS
header. The connection's ``link.pdu_error`` event is still emitted by the proxy.

The recording reads the bytes as the source side sent them, before any
fault stage. PDUs that a fault injects, drops or rewrites are therefore
not in it, and the faults record what they did in their own events.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.links.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDUError,
    PDUHeader,
    PDUReader,
    PDUType,
    ReaderResult,
    ReleaseRP,
)
from simulator.recording.failures import FailureKind, Side

TRACE_LENGTH = 32
"""PDU headers kept per direction for ``link.pdu_trace``."""

UNLIMITED = "unlimited"
"""Value that events write for a Maximum Length Received of 0."""

RecordedDirection = Literal["upstream", "downstream"]
_DIRECTIONS: tuple[RecordedDirection, RecordedDirection] = ("upstream", "downstream")
AbnormalReason = Literal[
    "abort",
    "reset",
    "proxy-error",
    "pdu-error",
    "tls-mismatch",
    "oversize",
    "middlebox-limit",
    "association-not-released",
]
"""Reason to dump ``link.pdu_trace``; a connection can have several.

``association-not-released`` means an A-ASSOCIATE-RQ was seen but neither
an A-ASSOCIATE-RJ nor an A-RELEASE-RP before the connection closed, which
covers an A-P-ABORT: a peer that just closes the TCP connection.
"""

Emit = Callable[..., Any]
"""``emit(kind, **fields)`` of the connection's current recorder."""


def size_bucket(length: int) -> int:
    """Return the power-of-two histogram bucket of a PDU length: b with b <= length < 2b, or 0."""
    if length <= 0:
        return 0

    return 1 << (length.bit_length() - 1)


def _limit_value(max_length: int | None) -> int | str | None:
    if max_length == 0:
        return UNLIMITED

    return max_length


@dataclass
class _DirectionRecord:
    """Counts, sizes and recent headers of one direction of a connection."""

    counts: Counter[str] = field(default_factory=Counter)
    sizes: Counter[int] = field(default_factory=Counter)
    trace: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TRACE_LENGTH))
    headers_seen: int = 0
    oversize: int = 0


class PDURecording:
    """PDU counts, sizes, negotiated maxima and recent headers of one connection.

    ``emit`` is called as ``emit(kind, **fields)``. The proxy passes a
    function that uses the connection's recorder as bound at that moment,
    so events carry the association id once it is known. Not thread-safe:
    the proxy calls it from one event loop.
    """

    def __init__(self, emit: Emit, note_failure: Callable[..., None] | None = None) -> None:
        self._emit = emit
        self._note_failure = note_failure
        self._directions = {
            "upstream": _DirectionRecord(),
            "downstream": _DirectionRecord(),
        }
        self._requestor_max_length: int | None = None
        self._acceptor_max_length: int | None = None
        self._association_requested = False
        self._association_ended = False
        self._abnormal: list[AbnormalReason | str] = []

    def reader(self, direction: RecordedDirection) -> PDUReader:
        """Return a PDU reader for ``direction`` that reports each PDU header here."""
        return PDUReader(on_header=lambda header: self._on_header(direction, header))

    def limit_for(self, direction: RecordedDirection) -> int | None:
        """Return the Maximum Length Received that limits PDUs sent in ``direction``.

        None means not negotiated yet or not advertised, 0 means unlimited.
        """
        if direction == "upstream":
            return self._acceptor_max_length

        return self._requestor_max_length

    def observe(self, direction: RecordedDirection, result: ReaderResult) -> None:
        """Take one result of the direction's reader: a PDU, a DIMSE command or an error."""
        if isinstance(result, AssociateRQ) and direction == "upstream":
            self._association_requested = True
            self._requestor_max_length = result.user_information.max_length
        elif isinstance(result, AssociateAC) and direction == "downstream":
            self._acceptor_max_length = result.user_information.max_length
        elif isinstance(result, AssociateRJ | ReleaseRP):
            self._association_ended = True
        elif isinstance(result, Abort):
            self.note_abnormal("abort")
        elif isinstance(result, PDUError):
            self._observe_error(direction, result)

    def note_abnormal(self, reason: AbnormalReason | str) -> None:
        """Mark the connection as ending abnormally, so that the trace is dumped at the end."""
        if reason not in self._abnormal:
            self._abnormal.append(reason)

    def finish(self, close_kind: str | None) -> dict[str, Any]:
        """Emit ``link.pdu_trace`` if the connection ended abnormally; return the summary fields.

        The summary goes into ``link.connection_closed``: ``pdu_sizes``
        (histogram per direction, keys are bucket lower bounds as strings),
        ``max_pdu_length`` (per direction, the limit on PDUs sent that way,
        ``"unlimited"`` for 0, None when not negotiated) and ``oversize_pdus``
        (count per direction).
        """
        if close_kind == "reset":
            self.note_abnormal("reset")
        if self._association_requested and not self._association_ended:
            self.note_abnormal("association-not-released")
        if self._abnormal:
            self._emit_trace()

        return {
            "pdu_sizes": {
                direction: {str(bucket): count for bucket, count in sorted(record.sizes.items())}
                for direction, record in self._directions.items()
            },
            "max_pdu_length": {
                direction: _limit_value(self.limit_for(direction)) for direction in _DIRECTIONS
            },
            "oversize_pdus": {
                direction: record.oversize for direction, record in self._directions.items()
            },
        }

    def _on_header(self, direction: RecordedDirection, header: PDUHeader) -> None:
        record = self._directions[direction]
        record.headers_seen += 1
        record.counts[header.pdu_type.event_name] += 1
        record.sizes[size_bucket(header.length)] += 1
        record.trace.append(
            {
                "pdu": header.pdu_type.event_name,
                "length": header.length,
                "stream_offset": header.stream_offset,
                "t_mono": round(time.monotonic(), 6),
            }
        )
        if header.pdu_type is PDUType.P_DATA_TF:
            self._check_oversize(direction, header)

    def _check_oversize(self, direction: RecordedDirection, header: PDUHeader) -> None:
        limit = self.limit_for(direction)
        if not limit or header.length <= limit:
            return

        self._directions[direction].oversize += 1
        self.note_abnormal("oversize")
        if self._note_failure is not None:
            sender = Side.REQUESTOR if direction == "upstream" else Side.ACCEPTOR
            self._note_failure(
                FailureKind.PDU_OVER_LIMIT,
                f"a {header.length}-byte PDU exceeds the {limit} bytes the receiver advertised",
                sender, {"length": header.length, "limit": limit, "direction": direction},
            )
        self._emit(
            "link.pdu_oversize",
            direction=direction,
            pdu=header.pdu_type.event_name,
            length=header.length,
            limit=limit,
            limit_advertised_by="acceptor" if direction == "upstream" else "requestor",
            stream_offset=header.stream_offset,
        )

    def _observe_error(self, direction: RecordedDirection, error: PDUError) -> None:
        if error.kind in ("tls-handshake", "tls-alert"):
            self.note_abnormal("tls-mismatch")
            if self._note_failure is not None:
                # A ClientHello going upstream: the requestor speaks TLS to a plain port.
                # A TLS record coming downstream: the acceptor expects TLS.
                side = Side.REQUESTOR if direction == "upstream" else Side.ACCEPTOR
                self._note_failure(
                    FailureKind.TLS_MISMATCH,
                    "TLS on one side and plain DICOM on the other: a TLS record arrived where "
                    f"a PDU should start (it would read as a PDU of {error.claimed_length} bytes)",
                    side, {"claimed_length": error.claimed_length, "direction": direction},
                )
            self._emit(
                "link.tls_mismatch",
                direction=direction,
                tls_record="handshake" if error.kind == "tls-handshake" else "alert",
                claimed_length=error.claimed_length,
                stream_offset=error.stream_offset,
                first_bytes=error.first_bytes,
            )
        elif error.fatal:
            self.note_abnormal("pdu-error")

    def _emit_trace(self) -> None:
        self._emit(
            "link.pdu_trace",
            reasons=list(self._abnormal),
            pdus={direction: dict(record.counts) for direction, record in self._directions.items()},
            headers={
                direction: list(record.trace) for direction, record in self._directions.items()
            },
            headers_not_kept={
                direction: record.headers_seen - len(record.trace)
                for direction, record in self._directions.items()
            },
        )
