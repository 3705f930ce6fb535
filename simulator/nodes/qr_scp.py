"""The Query/Retrieve SCP of a PACS: C-FIND, C-MOVE and C-GET over what the node stored.

A node serves these when its declaration lists the information model's
SOP classes (``StudyRootQueryRetrieveInformationModelFind``, ``...Move``,
``...Get`` and the ``PatientRoot...`` ones) with the SCP role. pynetdicom's
Query/Retrieve service class runs the protocol: it sends the pending and
final responses, opens the C-MOVE sub-association and counts the
sub-operations. The handlers here match the request against the node's
:class:`~simulator.nodes.qr_index.InstanceIndex` and record what happens.

Events never carry identifier values: only key names, counts, levels and
UIDs, because identifiers hold patient names, IDs and birth dates.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dsutils import decode

from simulator.nodes.association import AssociationTrace
from simulator.nodes.qr_common import RetrieveRoutes
from simulator.nodes.qr_index import (
    MODELS,
    InstanceIndex,
    Query,
    QueryError,
    QueryModel,
    parse_query,
)
from simulator.nodes.qr_job import JobSetup, RetrieveJob
from simulator.nodes.runtime import NodeServices
from simulator.nodes.scu import Destination, Outgoing, propose_contexts
from simulator.nodes.tls import SERVER_NAME
from simulator.recording.failures import Failure, FailureKind, Side, status_category
from simulator.topology.model import StorageNode

STATUS_PENDING = 0xFF00
STATUS_PENDING_WARNING = 0xFF01
STATUS_CANCEL = 0xFE00
STATUS_UNABLE_TO_PROCESS = 0xC000
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_RESPONSES = {"C_FIND_RSP": "C-FIND-RSP", "C_MOVE_RSP": "C-MOVE-RSP", "C_GET_RSP": "C-GET-RSP"}
_COUNTS = {
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}

TraceOf = Callable[[Any], AssociationTrace]


def model_of(sop_class_uid: str) -> tuple[QueryModel, str] | None:
    """Return the information model and service (find, move, get) of a Q/R SOP class UID."""
    for model in MODELS.values():
        service = model.service_of(sop_class_uid)
        if service is not None:
            return model, service
    return None


def serves_query_retrieve(declaration: StorageNode) -> bool:
    """Check whether the declaration gives the node the SCP role for any Q/R SOP class."""
    return any(model_of(entry.sop_class) is not None and "scp" in entry.roles
               for entry in declaration.sop_classes)


def serves_get(declaration: StorageNode) -> bool:
    return any((found := model_of(entry.sop_class)) is not None and found[1] == "get"
               and "scp" in entry.roles for entry in declaration.sop_classes)


class QueryRetrieveSCP:
    """The C-FIND, C-MOVE and C-GET handlers of one node, bound to its Storage SCP's server."""

    def __init__(self, declaration: StorageNode, services: NodeServices, index: InstanceIndex,
                 trace_of: TraceOf) -> None:
        self.declaration = declaration
        self.services = services
        self.index = index
        self.trace_of = trace_of
        self.routes = RetrieveRoutes(node=declaration.name)
        self._jobs: weakref.WeakKeyDictionary[Any, RetrieveJob] = weakref.WeakKeyDictionary()
        self._find_responses: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_C_FIND, self._on_c_find),
            (evt.EVT_C_MOVE, self._on_c_move),
            (evt.EVT_C_GET, self._on_c_get),
            (evt.EVT_DIMSE_SENT, self._on_dimse_sent),
            (evt.EVT_DIMSE_RECV, self._on_dimse_recv),
        ]

    def busy(self) -> bool:
        """Check whether a C-MOVE or C-GET still has sub-operations to settle."""
        with self._lock:
            return any(not job.finished for job in self._jobs.values())

    def stop(self) -> None:
        """Settle every retrieve still running; for the end of a run."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.finish()

    # C-FIND.

    def _on_c_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        trace = self.trace_of(event.assoc)
        model = MODELS["study"]
        found = model_of(str(event.request.AffectedSOPClassUID))
        if found is not None:
            model = found[0]
        query = self._parse(event, model, trace, "find")
        if isinstance(query, Dataset):
            yield query, None
            return
        matches = self.index.find(query, self.declaration.ae_title)
        self._emit_request(trace, "find", query, matches=len(matches))
        # 0xFF01: matches continue, but optional keys were not supported for matching.
        pending = STATUS_PENDING_WARNING if query.unsupported else STATUS_PENDING
        for number, identifier in enumerate(matches):
            if event.is_cancelled:
                trace.emit("qr.cancelled", service="find", after_matches=number)
                yield STATUS_CANCEL, None
                return
            yield pending, identifier

    # C-MOVE.

    def _on_c_move(self, event: Any) -> Iterator[Any]:
        trace = self.trace_of(event.assoc)
        model = self._model(event)
        ae_title = str(event.move_destination or "").strip()
        destination = self.routes.move_destination(ae_title)
        if destination is None:
            self._unknown_destination(event, trace, model, ae_title)
            yield None, None
            return
        query = self._parse(event, model, trace, "move", move_destination=ae_title)
        # pynetdicom 3.0.4 reads these keyword arguments for associate() only after
        # the count is yielded, so they are filled in then, once the job exists.
        sub_association: dict[str, Any] = {}
        yield destination.host, destination.port, sub_association
        if isinstance(query, Dataset):
            # NOTE: pynetdicom 3.0.4 takes the destination before an identifier can be
            # rejected; raising here makes it respond 0xC513 (unable to process), not 0xA900.
            raise QueryError(int(query.Status), str(query.get("ErrorComment", "")))
        instances = self.index.select(query)
        setup = JobSetup("move", self.declaration, self.services, self.routes, trace, event.assoc,
                         destination.node, destination.link, destination)
        job = self._start_job(setup, instances, query, ae_title)
        if not job.items:
            # pynetdicom answers success at once, without a sub-association.
            job.finish()
            yield 0
            return
        sub_association.update(self._prepare_sub_association(job, destination))
        yield len(job.items)
        yield from self._sub_operations(job, event)

    def _unknown_destination(self, event: Any, trace: AssociationTrace, model: QueryModel,
                             ae_title: str) -> None:
        """Record a C-MOVE to an AE title no outgoing link leads to; pynetdicom responds 0xA801."""
        known = sorted(d.called_ae for d in self.routes.destinations.values())
        failure = Failure(
            FailureKind.MOVE_DESTINATION_UNKNOWN, trace.link, Side.ACCEPTOR, True,
            f"{self.declaration.name} has no link whose called AE title is {ae_title!r}, so it "
            "responded 0xA801 (Move Destination unknown)",
            {"status": "0xA801", "move_destination": ae_title, "known_destinations": known},
        )
        try:
            query = parse_query(event.identifier, model, retrieve=True)
            instances = self.index.select(query)
        except Exception:  # noqa: BLE001 - the 0xA801 answer does not depend on the identifier
            query, instances = None, []
        node = self.routes.nodes_by_ae.get(ae_title, ae_title)
        self._emit_request(trace, "move", query, move_destination=ae_title,
                           instances=len(instances), destination=node)
        trace.emit("qr.move_destination_unknown", move_destination=ae_title,
                   known_destinations=known, **failure.as_record())
        # The rows name the node that has the AE title, or the title itself.
        setup = JobSetup("move", self.declaration, self.services, self.routes, trace,
                         event.assoc, node, trace.link)
        RetrieveJob(setup, instances).expect_rows()
        for instance in instances:
            self.services.ledger.failed(instance.sop_instance_uid, node, failure, service="move")

    # C-GET.

    def _on_c_get(self, event: Any) -> Iterator[Any]:
        trace = self.trace_of(event.assoc)
        model = self._model(event)
        query = self._parse(event, model, trace, "get")
        if isinstance(query, Dataset):
            raise QueryError(int(query.Status), str(query.get("ErrorComment", "")))
        instances = self.index.select(query)
        requestor = self.routes.requestor_node(trace.link, event.assoc.requestor.ae_title)
        setup = JobSetup("get", self.declaration, self.services, self.routes, trace, event.assoc,
                         requestor, trace.link)
        job = self._start_job(setup, instances, query, None)
        if not job.items:
            job.finish()
        yield len(instances)
        yield from self._sub_operations(job, event)

    # Shared by C-MOVE and C-GET.

    def _start_job(self, setup: JobSetup, instances: list[Any], query: Query,
                   ae_title: str | None) -> RetrieveJob:
        job = RetrieveJob(setup, instances)
        with self._lock:
            self._jobs[setup.control_assoc] = job
        self._emit_request(setup.control_trace, setup.service, query, move_destination=ae_title,
                           instances=len(instances), destination=setup.destination_node,
                           hop=setup.hop)
        job.expect_rows()

        return job

    def _sub_operations(self, job: RetrieveJob, event: Any) -> Iterator[Any]:
        """Yield one dataset per instance to pynetdicom's Move or Get SCP, and settle each."""
        try:
            for item in job.items:
                job.settle_started()
                if job.control_ended():
                    job.stop_reason = "control-association-ended"
                    self._emit_stopped(job)
                    return
                if event.is_cancelled:
                    job.stop_reason = "cancelled"
                    yield STATUS_CANCEL, None
                    return
                job.start(item)
                # pynetdicom 3.0.4 sends only a Dataset here, so the whole object is read.
                yield STATUS_PENDING, dcmread(item.instance.path)
            job.settle_started()
        except Exception as exc:
            # pynetdicom responds to a handler error with 0xC511 (Move) or 0xC411 (Get).
            job.stop_reason = f"scp-error: {type(exc).__name__}"
            raise
        finally:
            job.finish()

    def _prepare_sub_association(self, job: RetrieveJob, destination: Destination) -> dict[str, Any]:
        """Return the associate() arguments of the sub-association: contexts, handlers, our trace."""
        sub_trace = AssociationTrace(
            assoc_id=self.services.next_assoc_id(self.declaration.name), node=self.declaration.name,
            link=destination.link, role="requestor", recorder=self.services.recorder,
            registry=self.services.registry,
        )
        job.sub_trace = sub_trace
        items = [Outgoing(i.instance.path, i.instance.sop_class_uid, i.instance.sop_instance_uid,
                          i.instance.transfer_syntax_uid) for i in job.items]
        # A context pynetdicom can always negotiate, so that sub-operations without a
        # context of their own fail one by one, as on a real archive.
        contexts = propose_contexts(self.declaration, items) or [build_context(VERIFICATION_SOP_CLASS)]
        job.setup.control_trace.emit(
            "qr.sub_association", parent_assoc_id=job.setup.control_trace.assoc_id,
            sub_assoc_id=sub_trace.assoc_id, destination=destination.node,
            destination_ae=destination.called_ae, sub_link=destination.link,
        )
        sub_trace.emit(
            "association.requested", calling_ae=self.declaration.ae_title,
            called_ae=destination.called_ae, peer=destination.node,
            max_pdu_requestor=self.declaration.max_pdu,
            contexts=[{"context_id": 2 * n + 1, "sop_class": c.abstract_syntax,
                       "transfer_syntaxes": list(c.transfer_syntax)}
                      for n, c in enumerate(contexts)],
            parent_assoc_id=job.setup.control_trace.assoc_id,
        )
        job.sub_started_mono = time.monotonic()

        return {
            "contexts": contexts, "max_pdu": self.declaration.max_pdu,
            "ae_title": destination.called_ae, "tls_args": self._tls_args(),
            "evt_handlers": sub_trace.handlers() + [
                (evt.EVT_ACCEPTED, job.on_sub_accepted),
                (evt.EVT_DIMSE_SENT, lambda e: _on_store_message(job, e, "C_STORE_RQ")),
                (evt.EVT_DIMSE_RECV, lambda e: _on_store_message(job, e, "C_STORE_RSP")),
            ],
        }

    def _tls_args(self) -> tuple[Any, str] | None:
        if not self.declaration.tls:
            return None
        return self.services.tls.client_context(), SERVER_NAME

    # Responses pynetdicom sends, and C-STORE sub-operations on a C-GET association.

    def _on_dimse_sent(self, event: Any) -> None:
        name = type(event.message).__name__
        job = self._jobs.get(event.assoc)
        if name == "C_STORE_RQ" and job is not None:
            job.on_store_request(event.message.command_set)
            return
        command = _RESPONSES.get(name)
        if command is None:
            return
        status = int(event.message.command_set.Status)
        if command == "C-FIND-RSP":
            self._record_find_response(event, status)
            return
        self._record_retrieve_response(event, command, status, job)

    def _on_dimse_recv(self, event: Any) -> None:
        job = self._jobs.get(event.assoc)
        if job is not None and type(event.message).__name__ == "C_STORE_RSP":
            job.on_store_response(event.message.command_set)

    def _record_find_response(self, event: Any, status: int) -> None:
        count = self._find_responses.get(event.assoc, 0)
        if status_category(status) == "pending":
            self._find_responses[event.assoc] = count + 1
            return
        self._find_responses.pop(event.assoc, None)
        self.trace_of(event.assoc).emit(
            "qr.response", command="C-FIND-RSP", status=f"0x{status:04X}",
            status_category=status_category(status), pending_responses=count,
        )

    def _record_retrieve_response(self, event: Any, command: str, status: int,
                                  job: RetrieveJob | None) -> None:
        command_set = event.message.command_set
        counts = {key: int(command_set[keyword].value)
                  for key, keyword in _COUNTS.items()
                  if keyword in command_set and command_set[keyword].value is not None}
        fields: dict[str, Any] = {"command": command, "status": f"0x{status:04X}",
                                  "status_category": status_category(status), **counts}
        failed_uids = _failed_uid_list(event)
        if failed_uids is not None:
            fields["failed_sop_instance_uids"] = failed_uids
        # pynetdicom 3.0.4 still sends responses after the requestor aborted; record that.
        fields["association_open"] = bool(event.assoc.is_established
                                          and not event.assoc.acse.is_aborted())
        self.trace_of(event.assoc).emit("qr.response", **fields)
        if job is not None and status_category(status) != "pending":
            job.finish(status)

    # Helpers.

    def _model(self, event: Any) -> QueryModel:
        found = model_of(str(event.request.AffectedSOPClassUID))
        return found[0] if found is not None else MODELS["study"]

    def _parse(self, event: Any, model: QueryModel, trace: AssociationTrace, service: str,
               move_destination: str | None = None) -> Query | Dataset:
        """Return the checked query, or the failure status dataset to respond with."""
        try:
            return parse_query(event.identifier, model, retrieve=service != "find")
        except QueryError as exc:
            status, comment = exc.status, exc.comment
        except Exception as exc:  # noqa: BLE001 - an identifier that does not decode
            status, comment = STATUS_UNABLE_TO_PROCESS, f"cannot decode the identifier: {type(exc).__name__}"
        trace.emit("qr.request_rejected", service=service, model=model.name,
                   status=f"0x{status:04X}", error_comment=comment, move_destination=move_destination)
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = comment[:64]

        return answer

    def _emit_request(self, trace: AssociationTrace, service: str, query: Query | None,
                      **fields: Any) -> None:
        if query is not None:
            fields.update(model=query.model.name, level=query.level, query_keys=sorted(query.keys),
                          matching_keys=sorted(query.matching_keys),
                          unsupported_keys=sorted(query.unsupported))
        trace.emit("qr.request", service=service,
                   **{k: v for k, v in fields.items() if v is not None})

    def _emit_stopped(self, job: RetrieveJob) -> None:
        sent = [item for item in job.items if item.yielded]
        last = sent[-1] if sent else None
        job.setup.control_trace.emit(
            "qr.sub_operations_stopped", service=job.service, reason=job.stop_reason,
            remaining=len(job.items) - len(sent),
            abort_received=job.setup.control_trace.abort_received,
            last_sent_sop_instance_uid=None if last is None else last.instance.sop_instance_uid,
            last_sent_status=None if last is None or last.status is None else f"0x{last.status:04X}",
            **job.counts,
        )


def _on_store_message(job: RetrieveJob, event: Any, name: str) -> None:
    if type(event.message).__name__ != name:
        return
    if name == "C_STORE_RQ":
        job.on_store_request(event.message.command_set)
    else:
        job.on_store_response(event.message.command_set)


def _failed_uid_list(event: Any) -> list[str] | None:
    """Return the Failed SOP Instance UID List of a response's identifier, if it has one."""
    data_set = getattr(event.message, "data_set", None)
    if data_set is None or not data_set.getvalue():
        return None
    contexts = [cx for cx in event.assoc.accepted_contexts
                if cx.context_id == event.message.context_id]
    if not contexts:
        return None
    syntax = contexts[0].transfer_syntax[0]
    data_set.seek(0)
    try:
        identifier = decode(data_set, syntax.is_implicit_VR, syntax.is_little_endian,
                            syntax.is_deflated)
    except Exception:  # noqa: BLE001 - a response we cannot read is recorded without the list
        return None
    finally:
        data_set.seek(0)
    value = identifier.get("FailedSOPInstanceUIDList")
    if value is None:
        return None
    if isinstance(value, str):
        return [value] if value else []

    return [str(v) for v in value]
