"""Send C-STORE requests over one association and classify what goes wrong.

Both a modality and a router's forwarder send through :func:`store_batch`:
it proposes presentation contexts from the sender's declaration, opens one
association, sends each instance, and returns one :class:`StoreOutcome` per
instance. Every failure is classified here, where the evidence is.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.presentation import PresentationContext

from simulator.conformance.names import describe_uid
from simulator.links.registry import AssociationRegistry
from simulator.nodes.association import AssociationTrace
from simulator.nodes.runtime import configure_ae
from simulator.nodes.tls import SERVER_NAME, RunTls
from simulator.recording.failures import (
    CONTEXT_RESULT,
    Failure,
    FailureKind,
    Side,
    status_category,
    status_is_transient,
)
from simulator.recording.recorder import BoundRecorder
from simulator.topology.model import NodeBase, Role, Timeouts

Converter = Callable[["Outgoing", set[str]], "Outgoing | None"]
"""Re-encodes an item into one of the accepted transfer syntaxes, or returns None."""

MAX_CONTEXTS = 128
"""PS3.8 allows at most 128 presentation contexts (odd IDs 1 to 255) per association."""


@dataclass(frozen=True)
class Outgoing:
    """One instance to send: the file and what the proposal needs to know of it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoreOutcome:
    item: Outgoing
    status: int | None
    failure: Failure | None
    assoc_id: str

    @property
    def succeeded(self) -> bool:
        return self.status is not None and status_category(self.status) in ("success", "warning")


@dataclass(frozen=True)
class Destination:
    """A sender's target: the link proxy's address, and the AE title the sender calls."""

    node: str
    link: str
    host: str
    port: int
    called_ae: str
    tls: bool = False
    """Whether the receiver declares DICOM over TLS."""


def propose_contexts(sender: NodeBase, items: Sequence[Outgoing]) -> list[PresentationContext]:
    """Build the sender's proposal: one context per (SOP class, declared transfer syntax).

    One transfer syntax per context lets the acceptor accept or reject each
    encoding separately, so a compressed object never rides a context that
    was accepted for another encoding. Transfer syntaxes the batch uses come
    first, in case the 128-context limit cuts the list.
    """
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, str]] = set()
    used = {(i.sop_class_uid, i.transfer_syntax_uid) for i in items}
    for sop_class in dict.fromkeys(i.sop_class_uid for i in items):
        if not sender.supports(sop_class, Role.SCU):
            continue
        declared = sender.transfer_syntaxes_for(sop_class)
        ordered = [ts for ts in declared if (sop_class, ts) in used]
        ordered += [ts for ts in declared if (sop_class, ts) not in used]
        for transfer_syntax in ordered:
            if (sop_class, transfer_syntax) not in seen and len(contexts) < MAX_CONTEXTS:
                seen.add((sop_class, transfer_syntax))
                contexts.append(build_context(sop_class, [transfer_syntax]))

    return contexts


class StoreClient:
    """A node's Storage SCU: one pynetdicom AE configured from its declaration."""

    def __init__(
        self,
        declaration: NodeBase,
        recorder: BoundRecorder,
        registry: AssociationRegistry,
        next_assoc_id: Callable[[], str],
        converter: Converter | None = None,
        tls: RunTls | None = None,
    ) -> None:
        self.tls = tls
        self.held_open: list[tuple[AE, Any]] = []
        self.converter = converter
        self.declaration = declaration
        self.recorder = recorder
        self.registry = registry
        self.next_assoc_id = next_assoc_id

    def store_batch(self, destination: Destination, items: Sequence[Outgoing],
                    release: bool = True, pause_between_s: float = 0) -> list[StoreOutcome]:
        """Send ``items`` on one association; return an outcome for every item.

        With ``release`` false the association stays open afterwards, with no
        A-RELEASE and no FIN, as a sender that goes silent does; the peer's
        network timeout decides what happens to it. :meth:`abort_held` ends them.
        """
        assoc_id = self.next_assoc_id()
        trace = AssociationTrace(
            assoc_id=assoc_id, node=self.declaration.name, link=destination.link,
            role="requestor", recorder=self.recorder, registry=self.registry,
        )
        contexts = propose_contexts(self.declaration, items)
        unproposed = [i for i in items if (i.sop_class_uid, i.transfer_syntax_uid)
                      not in {(c.abstract_syntax, c.transfer_syntax[0]) for c in contexts}]
        outcomes = [self._not_proposed(i, destination, assoc_id) for i in unproposed]
        proposable = [i for i in items if i not in unproposed]
        if not proposable:
            return outcomes

        trace.emit(
            "association.requested",
            calling_ae=self.declaration.ae_title, called_ae=destination.called_ae,
            peer=destination.node, max_pdu_requestor=self.declaration.max_pdu,
            contexts=[{"context_id": 2 * n + 1, "sop_class": c.abstract_syntax,
                       "sop_class_name": describe_uid(c.abstract_syntax),
                       "transfer_syntaxes": list(c.transfer_syntax)}
                      for n, c in enumerate(contexts)],
        )
        ae = AE(ae_title=self.declaration.ae_title)
        configure_ae(ae, self.declaration)
        started = time.monotonic()
        tls_args = None
        bind_address = ("127.0.0.1", 0)
        if self.declaration.tls and self.tls is not None:
            tls_args = (self.tls.client_context(), SERVER_NAME)
            # A failed TLS handshake fires no EVT_CONN_OPEN, so the local port
            # the link proxy saw must be known before connecting.
            trace.local_port = _free_local_port()
            bind_address = ("127.0.0.1", trace.local_port)
            # EVT_CONN_OPEN fires only after the handshake, when the link proxy
            # has already seen the ClientHello and named the connection itself.
            self.registry.register(trace.local_port, assoc_id)
        assoc = ae.associate(
            destination.host, destination.port, contexts=contexts,
            ae_title=destination.called_ae, evt_handlers=trace.handlers(), tls_args=tls_args,
            max_pdu=self.declaration.max_pdu, bind_address=bind_address,
        )
        if not assoc.is_established:
            failure = self._association_failure(trace, destination, time.monotonic() - started)
            trace.emit("association.failed", **failure.as_record())
            _emit_timeout(trace, failure, self.declaration.timeouts)
            if trace.all_contexts_rejected:
                # Blame each instance on the context result the acceptor gave it.
                return outcomes + [StoreOutcome(i, None, self._context_rejected(assoc, i, destination),
                                                assoc_id) for i in proposable]
            return outcomes + [StoreOutcome(i, None, failure, assoc_id) for i in proposable]

        try:
            outcomes += self._send_all(assoc, trace, destination, proposable, pause_between_s)
        finally:
            if release or not assoc.is_established:
                if assoc.is_established:
                    assoc.release()
                if trace.release_timed_out:
                    trace.emit("timeout", timeout_kind="acse", timed_out_side="requestor",
                               timeout_s=self.declaration.timeouts.acse_s)
                ae.shutdown()
            else:
                trace.emit("association.held_open")
                self.held_open.append((ae, assoc))

        return outcomes

    def abort_held(self) -> None:
        """Abort the associations kept open by ``release=False``; for the end of a run."""
        for ae, assoc in self.held_open:
            if assoc.is_established:
                assoc.abort()
            ae.shutdown()
        self.held_open.clear()

    def _send_all(self, assoc: Any, trace: AssociationTrace, destination: Destination,
                  items: Sequence[Outgoing], pause_between_s: float = 0) -> list[StoreOutcome]:
        outcomes: list[StoreOutcome] = []
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for index, item in enumerate(items):
            if index and pause_between_s:
                time.sleep(pause_between_s)
            if not assoc.is_established:
                failure = self._broken_association(trace, destination, None)
                outcomes += [StoreOutcome(i, None, failure, trace.assoc_id) for i in items[index:]]
                break
            if (item.sop_class_uid, item.transfer_syntax_uid) not in accepted:
                converted = self._convert(item, accepted)
                if converted is not None:
                    outcome = self._send_one(assoc, trace, destination, converted)
                    outcomes.append(StoreOutcome(item, outcome.status, outcome.failure,
                                                 outcome.assoc_id))
                    continue
                failure = self._context_rejected(assoc, item, destination)
                trace.emit("dimse.not_sent", sop_instance_uid=item.sop_instance_uid,
                           **failure.as_record())
                outcomes.append(StoreOutcome(item, None, failure, trace.assoc_id))
                continue
            outcomes.append(self._send_one(assoc, trace, destination, item))

        return outcomes

    def _convert(self, item: Outgoing, accepted: set[tuple[str, str]]) -> Outgoing | None:
        if self.converter is None:
            return None
        syntaxes = {ts for sop_class, ts in accepted if sop_class == item.sop_class_uid}

        return self.converter(item, syntaxes) if syntaxes else None

    def _send_one(self, assoc: Any, trace: AssociationTrace, destination: Destination,
                  item: Outgoing) -> StoreOutcome:
        trace.emit("dimse.request", command="C-STORE-RQ", sop_class=item.sop_class_uid,
                   sop_instance_uid=item.sop_instance_uid,
                   transfer_syntax=item.transfer_syntax_uid, size_bytes=item.path.stat().st_size)
        started = time.monotonic()
        response: Dataset = assoc.send_c_store(item.path)
        elapsed_s = time.monotonic() - started
        status = getattr(response, "Status", None)
        if status is None:
            broken = self._broken_association(trace, destination, elapsed_s)
            trace.emit("dimse.no_response", sop_instance_uid=item.sop_instance_uid,
                       elapsed_s=round(elapsed_s, 4), **broken.as_record())
            _emit_timeout(trace, broken, self.declaration.timeouts)
            return StoreOutcome(item, None, broken, trace.assoc_id)

        category = status_category(status)
        detail = _status_detail(response)
        failure: Failure | None
        trace.emit("dimse.response", command="C-STORE-RSP", sop_instance_uid=item.sop_instance_uid,
                   status=f"0x{status:04X}", status_category=category,
                   elapsed_s=round(elapsed_s, 4), **detail)
        failure = None
        if category == "warning":
            failure = Failure(FailureKind.DIMSE_WARNING, destination.link, Side.ACCEPTOR, False,
                              f"C-STORE warning status 0x{status:04X}",
                              {"status": f"0x{status:04X}", **detail})
        elif category != "success":
            failure = Failure(FailureKind.DIMSE_FAILURE, destination.link, Side.ACCEPTOR,
                              not status_is_transient(status),
                              f"C-STORE failure status 0x{status:04X}",
                              {"status": f"0x{status:04X}", **detail})

        return StoreOutcome(item, status, failure, trace.assoc_id)

    # Classification of what went wrong.

    def _not_proposed(self, item: Outgoing, destination: Destination, assoc_id: str) -> StoreOutcome:
        sop_declared = self.declaration.supports(item.sop_class_uid, Role.SCU)
        reason = (
            f"the sender does not declare {describe_uid(item.transfer_syntax_uid)} for "
            f"{describe_uid(item.sop_class_uid)}, so it never proposed it"
            if sop_declared else
            f"the sender does not declare {describe_uid(item.sop_class_uid)} as SCU"
        )
        failure = Failure(
            FailureKind.NO_ACCEPTED_CONTEXT, destination.link, Side.REQUESTOR, True, reason,
            {"sop_class": item.sop_class_uid, "transfer_syntax": item.transfer_syntax_uid,
             "cause": "proposal"},
        )
        self.recorder.emit("dimse.not_sent", assoc_id=assoc_id, link=destination.link,
                           sop_instance_uid=item.sop_instance_uid, **failure.as_record())

        return StoreOutcome(item, None, failure, assoc_id)

    def _context_rejected(self, assoc: Any, item: Outgoing, destination: Destination) -> Failure:
        # PS3.8 9.3.3.2: the transfer syntax of a rejected context in the A-ASSOCIATE-AC
        # is not significant (DCMTK and Orthanc answer Implicit VR Little Endian there),
        # so each rejected context is matched with what was proposed under its ID.
        proposed = {cx.context_id: cx.transfer_syntax[0]
                    for cx in assoc.requestor.requested_contexts if cx.transfer_syntax}
        results = [
            {"context_id": cx.context_id, "result": cx.result,
             "result_name": CONTEXT_RESULT.get(cx.result or 0, str(cx.result))}
            for cx in assoc.rejected_contexts
            if cx.abstract_syntax == item.sop_class_uid
            and proposed.get(cx.context_id, item.transfer_syntax_uid) == item.transfer_syntax_uid
        ]
        result_name = results[0]["result_name"] if results else "not accepted"
        if not assoc.accepted_contexts:
            result_name += "; every context was rejected, so the requestor aborted"

        return Failure(
            FailureKind.NO_ACCEPTED_CONTEXT, destination.link, Side.ACCEPTOR, True,
            f"{destination.node} did not accept {describe_uid(item.sop_class_uid)} with "
            f"{describe_uid(item.transfer_syntax_uid)} ({result_name})",
            {"sop_class": item.sop_class_uid, "transfer_syntax": item.transfer_syntax_uid,
             "cause": "acceptance", "context_results": results},
        )

    def _association_failure(self, trace: AssociationTrace, destination: Destination,
                             elapsed_s: float) -> Failure:
        link = destination.link
        timeouts = self.declaration.timeouts
        link_note = self.registry.link_failure(trace.local_port)
        if link_note is not None:
            # The link proxy caused this connection's end (a fault, a firewall,
            # a middle box): blame it, not the peer the requestor saw.
            return link_note
        if trace.rejection is not None:
            permanent = trace.rejection.get("result") == 1
            detail = dict(trace.rejection)
            # Source 3 (presentation) reasons are the acceptor's capacity, not a peer that is down.
            detail["category"] = "capacity" if detail.get("source") == 3 else "configuration"
            return Failure(FailureKind.ASSOCIATION_REJECTED, link, Side.ACCEPTOR, permanent,
                           f"A-ASSOCIATE-RJ {trace.rejection.get('result')}/"
                           f"{trace.rejection.get('source')}/{trace.rejection.get('reason')}: "
                           f"{trace.rejection.get('reason_name')}", detail)
        if trace.all_contexts_rejected:
            return Failure(FailureKind.NO_ACCEPTED_CONTEXT, link, Side.ACCEPTOR, True,
                           "A-ASSOCIATE-AC with every presentation context rejected "
                           "(not an A-ASSOCIATE-RJ)", {"cause": "acceptance"})
        if destination.tls != self.declaration.tls and not trace.accepted:
            # No TLS record crossed the link, but the declarations disagree: a
            # TLS acceptor closes on a plain A-ASSOCIATE-RQ without answering.
            side = Side.ACCEPTOR if destination.tls else Side.REQUESTOR
            return Failure(FailureKind.TLS_MISMATCH, link, side, True,
                           f"{destination.node} declares TLS {'on' if destination.tls else 'off'} "
                           f"and {self.declaration.name} {'on' if self.declaration.tls else 'off'}",
                           {"requestor_tls": self.declaration.tls, "acceptor_tls": destination.tls,
                            "elapsed_s": round(elapsed_s, 3)})
        if trace.abort_received is not None:
            return Failure(FailureKind.ASSOCIATION_ABORTED, link, Side.ACCEPTOR, False,
                           f"A-ABORT from the peer during negotiation: {trace.abort_received['source_name']}",
                           dict(trace.abort_received))
        # On its ACSE timeout pynetdicom sends an A-ABORT and closes the connection
        # itself, so a closed connection means the peer closed it only when we sent no abort.
        if timeouts.acse_s is not None and elapsed_s >= timeouts.acse_s * 0.95 and \
                (trace.connection_closed_mono is None or trace.abort_sent is not None):
            return Failure(FailureKind.ACSE_TIMEOUT, link, Side.ACCEPTOR, False,
                           f"no A-ASSOCIATE-AC or -RJ within the requestor's ACSE timeout "
                           f"({timeouts.acse_s} s)", {"timeout_s": timeouts.acse_s,
                                                     "timed_out_side": "requestor"})
        return Failure(FailureKind.CONNECTION_CLOSED, link, Side.ACCEPTOR, False,
                       "the connection closed before the association was established",
                       {"elapsed_s": round(elapsed_s, 3)})

    def _broken_association(self, trace: AssociationTrace, destination: Destination,
                            elapsed_s: float | None) -> Failure:
        link = destination.link
        link_note = self.registry.link_failure(trace.local_port)
        if link_note is not None:
            return link_note
        peer_note = self.registry.peer_failure(trace.assoc_id)
        if peer_note is not None:
            return peer_note
        if trace.abort_received is not None and trace.abort_sent is None:
            return Failure(FailureKind.ASSOCIATION_ABORTED, link, Side.ACCEPTOR, False,
                           f"A-ABORT from {destination.node}: {trace.abort_received['source_name']}, "
                           f"{trace.abort_received['reason_name']}", dict(trace.abort_received))
        if trace.abort_sent is not None and trace.abort_received is None:
            dimse_s = self.declaration.timeouts.dimse_s
            return Failure(FailureKind.DIMSE_TIMEOUT, link, Side.ACCEPTOR, False,
                           f"no C-STORE-RSP within the requestor's DIMSE timeout ({dimse_s} s)",
                           {"timeout_s": dimse_s, "timed_out_side": "requestor",
                            "elapsed_s": None if elapsed_s is None else round(elapsed_s, 3)})
        return Failure(FailureKind.CONNECTION_CLOSED, link, Side.ACCEPTOR, False,
                       "the connection closed during the association (A-P-ABORT)",
                       {"elapsed_s": None if elapsed_s is None else round(elapsed_s, 3)})


def _free_local_port() -> int:
    # NOTE: another process could take the port between this close and
    # pynetdicom's bind; the association then fails to connect.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


_TIMEOUT_KINDS = {
    FailureKind.ACSE_TIMEOUT: "acse",
    FailureKind.DIMSE_TIMEOUT: "dimse",
    FailureKind.NETWORK_TIMEOUT: "network",
    FailureKind.CONNECTION_TIMEOUT: "connection",
}


def _emit_timeout(trace: AssociationTrace, failure: Failure, timeouts: Timeouts) -> None:
    timeout_kind = _TIMEOUT_KINDS.get(failure.failure_kind)
    if timeout_kind is None:
        return
    # The link proxy connects upstream with the requestor's connection timeout,
    # and its failure detail names the upstream address, not the timeout.
    if timeout_kind == "connection":
        timed_out_side = failure.detail.get("timed_out_side", "requestor")
        timeout_s = failure.detail.get("timeout_s", timeouts.connection_s)
    else:
        timed_out_side = failure.detail.get("timed_out_side")
        timeout_s = failure.detail.get("timeout_s")
    trace.emit("timeout", timeout_kind=timeout_kind, timed_out_side=timed_out_side,
               timeout_s=timeout_s)


def _status_detail(response: Dataset) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if "ErrorComment" in response:
        detail["error_comment"] = str(response.ErrorComment)
    if "OffendingElement" in response:
        value = response.OffendingElement
        tags = value if isinstance(value, list | tuple) else [value]
        detail["offending_element"] = [f"({int(t) >> 16:04X},{int(t) & 0xFFFF:04X})" for t in tags]

    return detail
