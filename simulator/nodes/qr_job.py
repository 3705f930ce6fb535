"""One C-MOVE or C-GET being served: its sub-operations, their ledger rows and their failures.

pynetdicom's Query/Retrieve service class sends the C-STORE sub-operations
and the responses. A :class:`RetrieveJob` follows it through DIMSE
notification events and the handler's generator. It settles each
sub-operation in the ledger when its C-STORE-RSP arrives, or with the
failure that stopped it. The sub-operations of a C-MOVE go over a new
association to the Move Destination; those of a C-GET go over the C-GET
association itself, with the requestor as the Storage SCP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from simulator.conformance.names import describe_uid
from simulator.nodes.association import AssociationTrace
from simulator.nodes.qr_common import (
    RetrieveRoutes,
    link_speed_evidence,
    requestor_timeout_failure,
    transfer_compatible,
)
from simulator.nodes.qr_index import IndexedInstance
from simulator.nodes.runtime import NodeServices
from simulator.nodes.scu import Destination, StoreClient
from simulator.recording.failures import (
    CONTEXT_RESULT,
    Failure,
    FailureKind,
    Side,
    status_category,
    status_is_transient,
)
from simulator.recording.ledger import InstanceInfo
from simulator.topology.model import Role, StorageNode

PEER_NOTE_WAIT_S = 0.5
"""Seconds a job waits for the requestor's note on why it aborted, written as the A-ABORT goes out."""


@dataclass
class SubOperation:
    """One instance a retrieve sends, and what happened to it."""

    instance: IndexedInstance
    yielded: bool = False
    sent: bool = False
    settled: bool = False
    status: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    precheck: Failure | None = None


@dataclass(frozen=True)
class JobSetup:
    """The parties of a retrieve: the serving node, the destination node, and the links."""

    service: str
    declaration: StorageNode
    services: NodeServices
    routes: RetrieveRoutes
    control_trace: AssociationTrace
    control_assoc: Any
    destination_node: str
    hop: str | None
    move_destination: Destination | None = None


class RetrieveJob:
    """The sub-operations of one C-MOVE or C-GET request."""

    def __init__(self, setup: JobSetup, instances: list[IndexedInstance]) -> None:
        self.setup = setup
        self.service = setup.service
        self.items = [SubOperation(i) for i in instances]
        self._by_uid = {item.instance.sop_instance_uid: item for item in self.items}
        self.sub_trace: AssociationTrace | None = None
        self.sub_assoc: Any = None
        self.sub_started_mono: float | None = None
        self.finished = False
        self.stop_reason: str | None = None
        self.counts = {"completed": 0, "failed": 0, "warning": 0}
        self._lock = threading.RLock()
        self._store_client = StoreClient(
            setup.declaration, setup.services.recorder, setup.services.registry,
            lambda: setup.services.next_assoc_id(setup.declaration.name), tls=setup.services.tls,
        )

    # The parties, as the failure records name them.

    @property
    def receiver_side(self) -> Side:
        """The side of the hop's association that receives the C-STOREs."""
        return Side.ACCEPTOR if self.service == "move" else Side.REQUESTOR

    @property
    def data_direction(self) -> str:
        return "upstream" if self.service == "move" else "downstream"

    @property
    def store_trace(self) -> AssociationTrace:
        return self.sub_trace if self.sub_trace is not None else self.setup.control_trace

    # The ledger.

    def expect_rows(self) -> None:
        """Add one ledger row per instance the retrieve sends to its destination."""
        for item in self.items:
            self.setup.services.ledger.expect(self._info(item.instance), self.setup.destination_node,
                                              self.service)

    def _info(self, instance: IndexedInstance) -> InstanceInfo:
        known = self.setup.services.instances.get(instance.sop_instance_uid)
        return InstanceInfo(
            sop_instance_uid=instance.sop_instance_uid, sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            study_instance_uid=instance.value("StudyInstanceUID"),
            series_instance_uid=instance.value("SeriesInstanceUID"),
            source=self.setup.declaration.name,
            source_file=known.source_file if known is not None else instance.path.name,
        )

    def start(self, item: SubOperation) -> None:
        """Mark ``item`` as handed to pynetdicom, after a check of the contexts it needs."""
        with self._lock:
            item.yielded = True
            item.precheck = self._context_failure(item.instance)
        self.setup.services.ledger.attempt(item.instance.sop_instance_uid,
                                           self.setup.destination_node, self.setup.hop or "",
                                           self.service)

    # Evidence from pynetdicom's notification events.

    def on_store_request(self, command: Any) -> None:
        uid = str(command.AffectedSOPInstanceUID)
        item = self._by_uid.get(uid)
        if item is None:
            return
        with self._lock:
            item.sent = True
        self.store_trace.emit(
            "dimse.request", command="C-STORE-RQ", sop_class=str(command.AffectedSOPClassUID),
            sop_instance_uid=uid, size_bytes=item.instance.size_bytes, sub_operation_of=self.service,
        )

    def on_store_response(self, command: Any) -> None:
        uid = str(command.get("AffectedSOPInstanceUID", "") or "")
        item = self._by_uid.get(uid)
        if item is None:
            return
        status = int(command.Status)
        detail: dict[str, Any] = {}
        if "ErrorComment" in command:
            detail["error_comment"] = str(command.ErrorComment)
        with self._lock:
            item.status = status
            item.detail = detail
        self.store_trace.emit("dimse.response", command="C-STORE-RSP", sop_instance_uid=uid,
                              status=f"0x{status:04X}", status_category=status_category(status),
                              sub_operation_of=self.service, **detail)

    def on_sub_accepted(self, event: Any) -> None:
        self.sub_assoc = event.assoc

    # Settling sub-operations.

    def settle_started(self) -> None:
        """Settle every sub-operation pynetdicom has processed; call when the generator resumes."""
        for item in self.items:
            if item.yielded and not item.settled:
                self._settle(item)

    def _settle(self, item: SubOperation) -> None:
        with self._lock:
            if item.settled:
                return
            item.settled = True
        uid = item.instance.sop_instance_uid
        ledger = self.setup.services.ledger
        destination = self.setup.destination_node
        failure = None
        if item.status is not None and status_category(item.status) in ("success", "warning"):
            outcome = "completed" if status_category(item.status) == "success" else "warning"
            warning = None if outcome == "completed" else Failure(
                FailureKind.DIMSE_WARNING, self.setup.hop, self.receiver_side, False,
                f"C-STORE sub-operation warning status 0x{item.status:04X}",
                {"status": f"0x{item.status:04X}", **item.detail})
            ledger.delivered(uid, destination, self.setup.hop or "", item.status,
                             warning=warning, service=self.service)
        else:
            outcome = "failed"
            failure = self._failure_of(item)
            ledger.failed(uid, destination, failure, item.status, service=self.service)
        self.counts[outcome] += 1
        self.setup.control_trace.emit(
            "qr.sub_operation", service=self.service, sop_instance_uid=uid, outcome=outcome,
            status=None if item.status is None else f"0x{item.status:04X}",
            store_assoc_id=self.store_trace.assoc_id,
            failure=None if failure is None else failure.as_record(),
        )

    def _failure_of(self, item: SubOperation) -> Failure:
        if item.status is not None:
            return self._status_failure(item.status, item.detail)
        if item.precheck is not None:
            return item.precheck
        if item.sent:
            return self._broken_failure(item)
        return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.ACCEPTOR, False,
                       "the retrieve SCP did not send the C-STORE sub-operation",
                       {"cause": "not-sent", "service": self.service})

    def _status_failure(self, status: int, detail: dict[str, Any]) -> Failure:
        return Failure(FailureKind.DIMSE_FAILURE, self.setup.hop, self.receiver_side,
                       not status_is_transient(status),
                       f"C-STORE sub-operation of a C-{self.service.upper()} failed with "
                       f"status 0x{status:04X}", {"status": f"0x{status:04X}", **detail})

    def _broken_failure(self, item: SubOperation) -> Failure:
        if self.service == "move" and self.sub_trace is not None and self.setup.move_destination:
            return self._store_client._broken_association(
                self.sub_trace, self.setup.move_destination, None)
        return self._stop_failure(item)

    # Finishing.

    def control_ended(self) -> bool:
        """Check whether the requestor's association is gone: aborted, closed or released."""
        assoc = self.setup.control_assoc
        return bool(not assoc.is_established or assoc.acse.is_aborted()
                    or assoc.acse.is_release_requested())

    def finish(self, final_status: int | None = None) -> None:
        """Settle what was sent and fail what was not; safe to call more than once.

        The lock is held throughout, so a second caller returns only once
        every row is settled, and :attr:`finished` turns true only then.
        """
        with self._lock:
            if self.finished:
                return
            self.settle_started()
            unsent = [item for item in self.items if not item.yielded]
            if unsent:
                in_flight = next((i for i in reversed(self.items) if i.yielded), None)
                failure = self._unsent_failure(final_status, in_flight)
                for item in unsent:
                    self._fail_unsent(item, failure)
            self.setup.control_trace.emit(
                "qr.finished", service=self.service, instances=len(self.items),
                not_sent=len(unsent), stop_reason=self.stop_reason,
                final_status=None if final_status is None else f"0x{final_status:04X}",
                **self.counts,
            )
            self.finished = True

    def _fail_unsent(self, item: SubOperation, failure: Failure) -> None:
        item.settled = True
        self.counts["failed"] += 1
        self.setup.services.ledger.failed(item.instance.sop_instance_uid,
                                          self.setup.destination_node, failure,
                                          service=self.service)
        self.setup.control_trace.emit(
            "qr.sub_operation", service=self.service,
            sop_instance_uid=item.instance.sop_instance_uid, outcome="not-sent",
            status=None, failure_kind=str(failure.failure_kind),
        )

    def _unsent_failure(self, final_status: int | None, in_flight: SubOperation | None) -> Failure:
        sub_trace = self.sub_trace
        if self.service == "move" and sub_trace is not None and not sub_trace.accepted:
            return self._sub_association_failure(sub_trace)
        if self.stop_reason is not None and self.stop_reason.startswith("scp-error"):
            return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.ACCEPTOR, False,
                           f"the retrieve SCP failed before this sub-operation ({self.stop_reason})",
                           {"cause": "scp-error"})
        if self.stop_reason == "cancelled":
            return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.REQUESTOR, False,
                           f"the requestor cancelled the C-{self.service.upper()} (C-CANCEL) "
                           "before this sub-operation", {"cause": "cancelled"})
        if self.control_ended() or self.stop_reason == "control-association-ended":
            return self._stop_failure(in_flight)
        if final_status is not None and status_category(final_status) == "failure":
            return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.ACCEPTOR, False,
                           f"the C-{self.service.upper()} ended with status 0x{final_status:04X} "
                           "before this sub-operation", {"cause": "retrieve-failed",
                                                         "status": f"0x{final_status:04X}"})
        return Failure(FailureKind.NEVER_ATTEMPTED, self.setup.hop, Side.RUN, False,
                       "the run ended before this sub-operation was sent")

    def _sub_association_failure(self, sub_trace: AssociationTrace) -> Failure:
        destination = self.setup.move_destination
        assert destination is not None
        elapsed_s = time.monotonic() - (self.sub_started_mono or time.monotonic())
        failure = self._store_client._association_failure(
            sub_trace, destination, elapsed_s)
        sub_trace.emit("association.failed", **failure.as_record())

        return failure

    def _stop_failure(self, in_flight: SubOperation | None) -> Failure:
        """Classify why the requestor's association ended before every sub-operation was sent.

        ``in_flight`` is the last sub-operation handed to pynetdicom: the one
        on the wire when the requestor gave up.
        """
        trace = self.setup.control_trace
        registry = self.setup.services.registry
        note = registry.peer_failure(trace.assoc_id)
        deadline = time.monotonic() + PEER_NOTE_WAIT_S
        while note is None and trace.abort_received is not None and time.monotonic() < deadline:
            time.sleep(0.02)
            note = registry.peer_failure(trace.assoc_id)
        hop = self.setup.hop
        if note is not None and note.failure_kind == FailureKind.DIMSE_TIMEOUT:
            size = in_flight.instance.size_bytes if in_flight is not None else None
            evidence = link_speed_evidence(self.setup.routes, hop, self.data_direction, size)
            if in_flight is not None:
                evidence["in_flight_sop_instance_uid"] = in_flight.instance.sop_instance_uid
            not_sent = sum(1 for item in self.items if not item.yielded)
            return requestor_timeout_failure(note, hop, evidence, self.counts["completed"],
                                             not_sent, self.service)
        if note is not None:
            return Failure(note.failure_kind, hop, note.side, note.permanent, note.reason,
                           {**note.detail, "control_link": note.hop})
        if trace.abort_received is not None:
            return Failure(FailureKind.ASSOCIATION_ABORTED, hop, Side.REQUESTOR, False,
                           f"the requestor aborted the C-{self.service.upper()} association "
                           "before this sub-operation", dict(trace.abort_received))
        if trace.released:
            return Failure(FailureKind.SUB_OPERATION_FAILED, hop, Side.REQUESTOR, False,
                           f"the requestor released the C-{self.service.upper()} association "
                           "before this sub-operation", {"cause": "released"})
        return Failure(FailureKind.CONNECTION_CLOSED, hop, Side.REQUESTOR, False,
                       f"the C-{self.service.upper()} association closed before this "
                       "sub-operation (A-P-ABORT)", {})

    # Presentation contexts the sub-operations need.

    def _context_failure(self, instance: IndexedInstance) -> Failure | None:
        assoc = self.sub_assoc if self.service == "move" else self.setup.control_assoc
        if assoc is None:
            return None
        sop_class, transfer_syntax = instance.sop_class_uid, instance.transfer_syntax_uid
        contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        as_scu = [cx for cx in contexts if cx.as_scu]
        if as_scu and any(transfer_compatible(cx.transfer_syntax[0], transfer_syntax)
                          for cx in as_scu):
            return None
        if self.service == "move":
            return self._move_context_failure(assoc, instance)
        if contexts and not as_scu:
            return self._role_failure(assoc, instance)

        return self._get_context_failure(assoc, instance, bool(as_scu))

    def _move_context_failure(self, assoc: Any, instance: IndexedInstance) -> Failure:
        destination = self.setup.move_destination
        assert destination is not None
        proposed = [cx for cx in assoc.accepted_contexts + assoc.rejected_contexts
                    if cx.abstract_syntax == instance.sop_class_uid
                    and any(transfer_compatible(ts, instance.transfer_syntax_uid)
                            for ts in cx.transfer_syntax)]
        if proposed:
            return self._store_client._context_rejected(
                assoc, _outgoing(instance), destination)
        declared = self.setup.declaration.supports(instance.sop_class_uid, Role.SCU)
        what = (f"{describe_uid(instance.transfer_syntax_uid)} for "
                f"{describe_uid(instance.sop_class_uid)}" if declared
                else f"{describe_uid(instance.sop_class_uid)} as SCU")
        return Failure(
            FailureKind.NO_ACCEPTED_CONTEXT, self.setup.hop, Side.REQUESTOR, True,
            f"{self.setup.declaration.name} does not declare {what}, so it never proposed it "
            "on the C-MOVE sub-association",
            {"sop_class": instance.sop_class_uid, "transfer_syntax": instance.transfer_syntax_uid,
             "cause": "proposal"},
        )

    def _role_failure(self, assoc: Any, instance: IndexedInstance) -> Failure:
        sop_class = instance.sop_class_uid
        proposed = assoc.requestor.role_selection.get(sop_class)
        detail: dict[str, Any] = {
            "cause": "role-not-negotiated", "sop_class": sop_class,
            "role_selection_proposed": proposed is not None,
        }
        if proposed is None:
            return Failure(
                FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.REQUESTOR, True,
                f"the C-GET requestor proposed {describe_uid(sop_class)} without SCP/SCU Role "
                "Selection, so the context was accepted with the default roles (requestor SCU) "
                "and the C-STORE sub-operation could not be sent", detail,
            )
        detail.update(proposed_scu_role=proposed.scu_role, proposed_scp_role=proposed.scp_role)
        return Failure(
            FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.ACCEPTOR, True,
            f"the C-GET requestor proposed the SCP role for {describe_uid(sop_class)} but "
            f"{self.setup.declaration.name} did not accept it, so the C-STORE sub-operation "
            "could not be sent", detail,
        )

    def _get_context_failure(self, assoc: Any, instance: IndexedInstance,
                             sop_class_usable: bool) -> Failure:
        sop_class, transfer_syntax = instance.sop_class_uid, instance.transfer_syntax_uid
        rejected = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == sop_class]
        results = [{"context_id": cx.context_id, "result": cx.result,
                    "result_name": CONTEXT_RESULT.get(cx.result or 0, str(cx.result))}
                   for cx in rejected]
        detail: dict[str, Any] = {"sop_class": sop_class, "transfer_syntax": transfer_syntax,
                                  "context_results": results}
        if rejected and not sop_class_usable:
            return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.ACCEPTOR, True,
                           f"{self.setup.declaration.name} rejected the {describe_uid(sop_class)} "
                           "contexts of the C-GET, so the sub-operation could not be sent",
                           {"cause": "sop-class-not-accepted", **detail})
        cause = "transfer-syntax-not-proposed" if sop_class_usable else "sop-class-not-proposed"
        what = (f"{describe_uid(transfer_syntax)} for {describe_uid(sop_class)}"
                if sop_class_usable else describe_uid(sop_class))
        return Failure(FailureKind.SUB_OPERATION_FAILED, self.setup.hop, Side.REQUESTOR, True,
                       f"the C-GET requestor did not propose {what}, so the C-STORE "
                       "sub-operation could not be sent", {"cause": cause, **detail})


def _outgoing(instance: IndexedInstance) -> Any:
    from simulator.nodes.scu import Outgoing

    return Outgoing(instance.path, instance.sop_class_uid, instance.sop_instance_uid,
                    instance.transfer_syntax_uid)
