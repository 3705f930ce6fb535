"""Record what happens on one association, from the node's side of it.

pynetdicom runs each association in its own threads and tells us about it
through notification events. :class:`AssociationTrace` binds handlers for
those events, writes ``association.*`` events to the run log, and keeps the
facts a later classification needs: what was received, who aborted, whether
the peer closed the connection first.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT

from simulator.conformance.names import describe_uid
from simulator.links.registry import AssociationRegistry
from simulator.recording.failures import (
    CONTEXT_RESULT,
    abort_names,
    rejection_names,
)
from simulator.recording.recorder import BoundRecorder

Handler = Any
"""A pynetdicom (event, handler) pair."""


def set_tcp_nodelay(sock: socket.socket | None) -> None:
    """Turn off Nagle's algorithm: without it each DIMSE exchange waits ~40 ms for delayed ACKs."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def association_socket(assoc: Any) -> socket.socket | None:
    transport = getattr(assoc.dul, "socket", None)

    return getattr(transport, "socket", None)


def context_records(contexts: list[Any]) -> list[dict[str, Any]]:
    records = []
    for cx in contexts:
        result = cx.result if cx.result is not None else 0
        record: dict[str, Any] = {
            "context_id": cx.context_id,
            "sop_class": cx.abstract_syntax,
            "sop_class_name": describe_uid(cx.abstract_syntax) if cx.abstract_syntax else None,
            "result": result,
            "result_name": CONTEXT_RESULT.get(result, f"unknown ({result})"),
        }
        if result == 0 and cx.transfer_syntax:
            record["transfer_syntax"] = cx.transfer_syntax[0]
        records.append(record)

    return records


@dataclass
class AssociationTrace:
    """What one association went through, as seen by one node."""

    assoc_id: str
    node: str
    link: str | None
    role: str
    recorder: BoundRecorder
    registry: AssociationRegistry
    started_mono: float = field(default_factory=time.monotonic)
    rejection: dict[str, Any] | None = None
    abort_received: dict[str, Any] | None = None
    abort_sent: dict[str, Any] | None = None
    provider_abort: dict[str, Any] | None = None
    accepted: bool = False
    all_contexts_rejected: bool = False
    released: bool = False
    release_requested: bool = False
    release_timed_out: bool = False
    connection_closed_mono: float | None = None
    last_activity_mono: float = field(default_factory=time.monotonic)
    last_received_mono: float = field(default_factory=time.monotonic)
    negotiated: dict[str, Any] = field(default_factory=dict)
    local_port: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.recorder.emit(kind, assoc_id=self.assoc_id, link=self.link, role=self.role, **fields)

    def handlers(self) -> list[Handler]:
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_PDU_RECV, self._on_pdu_recv),
            (evt.EVT_PDU_SENT, self._on_pdu_sent),
            (evt.EVT_ACSE_RECV, self._on_acse_recv),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self._on_released),
        ]

    # Handlers run in pynetdicom's threads; they only record.

    def _on_conn_open(self, event: Any) -> None:
        sock = association_socket(event.assoc)
        set_tcp_nodelay(sock)
        if self.role == "requestor" and sock is not None:
            # The link proxy reads this to tag its own events with our assoc_id.
            self.local_port = sock.getsockname()[1]
            self.registry.register(self.local_port, self.assoc_id)

    def _on_conn_close(self, _event: Any) -> None:
        self.connection_closed_mono = time.monotonic()

    def _on_pdu_recv(self, event: Any) -> None:
        self.last_activity_mono = time.monotonic()
        self.last_received_mono = self.last_activity_mono
        pdu = event.pdu
        if isinstance(pdu, A_ABORT_RQ):
            self.abort_received = abort_names(pdu.source, pdu.reason_diagnostic)
        elif isinstance(pdu, A_ASSOCIATE_RJ):
            # pynetdicom 3.0.4 can report a rejection as an abort when the peer
            # closes right after the A-ASSOCIATE-RJ; the PDU itself is reliable.
            self.rejection = rejection_names(
                pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0
            )

    def _on_pdu_sent(self, event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ABORT_RQ):
            # Not activity: an idle timeout is measured up to the abort it causes.
            self.abort_sent = abort_names(pdu.source, pdu.reason_diagnostic)
            return
        self.last_activity_mono = time.monotonic()
        if isinstance(pdu, A_RELEASE_RQ):
            self.release_requested = True
        if isinstance(pdu, A_ASSOCIATE_RJ) and self.role == "acceptor":
            self.rejection = rejection_names(
                pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0
            )
            # EVT_REJECTED can fire before the PDU is on the wire; record it here.
            self.emit("association.rejected", **self.rejection)

    def _on_acse_recv(self, event: Any) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result is None:
            self._on_request_received(event.assoc, primitive)
        elif isinstance(primitive, A_ASSOCIATE) and primitive.result in (1, 2):
            self.rejection = rejection_names(
                primitive.result, primitive.result_source or 0, primitive.diagnostic or 0
            )
        elif isinstance(primitive, A_P_ABORT):
            self.provider_abort = {"provider_reason": primitive.provider_reason}
        elif isinstance(primitive, A_ABORT) and self.abort_received is None:
            self.abort_received = abort_names(primitive.abort_source, 0)

    def _on_request_received(self, assoc: Any, primitive: A_ASSOCIATE) -> None:
        # The proxy registered its upstream port before forwarding this
        # A-ASSOCIATE-RQ, so the requestor's assoc_id can be found now.
        known = self.registry.lookup(assoc.requestor.port)
        if known is not None:
            self.assoc_id = known
            self.link = self.registry.link_of(known) or self.link
        proposed = []
        for cx in primitive.presentation_context_definition_list:
            proposed.append({
                "context_id": cx.context_id,
                "sop_class": cx.abstract_syntax,
                "sop_class_name": describe_uid(cx.abstract_syntax),
                "transfer_syntaxes": list(cx.transfer_syntax),
            })
        self.emit(
            "association.requested",
            calling_ae=primitive.calling_ae_title,
            called_ae=primitive.called_ae_title,
            max_pdu_requestor=primitive.maximum_length_received,
            contexts=proposed,
        )

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        self.accepted = True
        contexts = list(assoc.accepted_contexts) + list(assoc.rejected_contexts)
        contexts.sort(key=lambda cx: cx.context_id or 0)
        self.all_contexts_rejected = not assoc.accepted_contexts
        self.negotiated = {
            "max_pdu_requestor": assoc.requestor.maximum_length,
            "max_pdu_acceptor": assoc.acceptor.maximum_length,
        }
        self.emit(
            "association.accepted",
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            contexts=context_records(contexts),
            # Each side's Maximum Length is what it receives; 0 means unlimited.
            max_pdu_requestor=assoc.requestor.maximum_length,
            max_pdu_acceptor=assoc.acceptor.maximum_length,
            implementation_class_uid=_peer(assoc, self.role).implementation_class_uid,
            implementation_version_name=_peer(assoc, self.role).implementation_version_name,
            all_contexts_rejected=self.all_contexts_rejected,
        )

    def _on_rejected(self, _event: Any) -> None:
        if self.role == "requestor":
            self.emit("association.rejected", **(self.rejection or {}))

    def _on_aborted(self, event: Any) -> None:
        if self.rejection is not None and self.role == "requestor":
            self.emit("association.rejected", **self.rejection)
            return
        if self.abort_sent is None and getattr(event.assoc, "_sent_abort", False):
            # Association.abort() in pynetdicom 3.0.4 (used on its ACSE, DIMSE and
            # network timeouts) fires EVT_ABORTED before the A-ABORT PDU is sent,
            # and always sends source 0 (service-user) with reason 0.
            self.abort_sent = abort_names(0, 0)
        if self._release_timed_out():
            # pynetdicom 3.0.4 ends a release that gets no A-RELEASE-RP within its ACSE
            # timeout with an A-ABORT of source 2, and fires EVT_ABORTED before sending it.
            self.release_timed_out = True
            self.abort_sent = abort_names(2, 0)
        if self.abort_sent is not None:
            self.emit("association.aborted", pdu="A-ABORT", initiated_by="local", **self.abort_sent)
        elif self.abort_received is not None:
            self.emit("association.aborted", pdu="A-ABORT", initiated_by="peer", **self.abort_received)
        else:
            # No A-ABORT PDU either way: the connection dropped (PS3.8 A-P-ABORT).
            self.emit("association.aborted", pdu="A-P-ABORT", initiated_by="provider",
                      **(self.provider_abort or {}))

    def _release_timed_out(self) -> bool:
        # A peer that closes the connection during the release closes it before EVT_ABORTED.
        return (self.role == "requestor" and self.release_requested and not self.released
                and self.abort_sent is None and self.abort_received is None
                and self.provider_abort is None and self.connection_closed_mono is None)

    def _on_released(self, _event: Any) -> None:
        self.released = True
        self.emit("association.released")

    def seconds_since_activity(self) -> float:
        return time.monotonic() - self.last_activity_mono


def idle_timer_expired(event: Any) -> bool:
    """Return True when the association's network (idle) timer has expired."""
    dul = getattr(event.assoc, "dul", None)

    return bool(dul is not None and dul.idle_timer_expired())


def _peer(assoc: Any, role: str) -> Any:
    return assoc.acceptor if role == "requestor" else assoc.requestor
