"""The Query/Retrieve SCU of a viewer: C-FIND, then C-MOVE or C-GET, as a scenario step requests.

A retrieve walks the information model from its top level down to the
requested one with C-FIND, as viewers do: each level's query carries the
unique keys found above it, so a strictly hierarchical archive accepts it.
It then asks for what matched with one C-MOVE or C-GET per parent entity,
listing the unique keys (List of UID matching).

For C-GET the viewer proposes its storage SOP classes and, only for those
its declaration gives the SCP role, an SCP/SCU Role Selection item: a
viewer declared SCU-only for a SOP class proposes none, and the archive
then cannot send those C-STORE sub-operations.

Events carry key names, counts and UIDs, never identifier values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt

from simulator.conformance.names import describe_uid
from simulator.nodes.association import AssociationTrace
from simulator.nodes.qr_common import SLOW_PEER, RetrieveRoutes, link_speed_evidence
from simulator.nodes.qr_index import MODELS, UNIQUE_KEYS, QueryModel, level_of_key
from simulator.nodes.qr_scp import VERIFICATION_SOP_CLASS, model_of
from simulator.nodes.runtime import NodeServices, configure_ae
from simulator.nodes.scu import MAX_CONTEXTS, Destination, StoreClient
from simulator.nodes.tls import SERVER_NAME
from simulator.recording.failures import Failure, FailureKind, Side, status_category
from simulator.topology.model import Role, StorageNode

StoreSubOperation = Callable[[Any, AssociationTrace], Any]
"""The C-STORE handler of a C-GET association: (event, trace) -> status."""

_COUNT_KEYWORDS = {
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}


@dataclass(frozen=True)
class RetrieveRequest:
    """A retrieve step's request; ``keys`` maps keywords to values (a list for several UIDs)."""

    step: int
    source: str
    service: str
    model: str = "study"
    level: str = "STUDY"
    keys: Mapping[str, str | list[str]] = field(default_factory=dict)
    move_destination: str | None = None


@dataclass
class RetrieveOutcome:
    """The result of one retrieve step, as the requestor saw it."""

    assoc_id: str | None = None
    matches: int = 0
    requests: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    failure: Failure | None = None


class _TimeoutWatch:
    """Notes a DIMSE timeout of the requestor before its A-ABORT reaches the archive.

    pynetdicom 3.0.4 aborts on its DIMSE timeout without saying why; the
    archive reads this note from the registry to classify the sub-operations
    the abort stopped.
    """

    def __init__(self, trace: AssociationTrace, services: NodeServices, dimse_s: float | None,
                 service: str) -> None:
        self.trace = trace
        self.services = services
        self.dimse_s = dimse_s
        self.service = service
        self.last_message_mono = time.monotonic()
        self.waiting = False
        self.note: Failure | None = None

    def on_message(self, _event: Any) -> None:
        self.last_message_mono = time.monotonic()

    def on_aborted(self, event: Any) -> None:
        if not getattr(event.assoc, "_sent_abort", False) or not self.waiting or self.dimse_s is None:
            return
        waited_s = time.monotonic() - self.last_message_mono
        if waited_s < self.dimse_s * 0.95:
            return
        self.note = Failure(
            FailureKind.DIMSE_TIMEOUT, self.trace.link, Side.REQUESTOR, False,
            f"no C-{self.service.upper()} response within the requestor's DIMSE timeout "
            f"({self.dimse_s} s); the requestor aborted the association",
            {"timeout_s": self.dimse_s, "timed_out_side": "requestor", "association": "control",
             "service": self.service, "waited_s": round(waited_s, 3)},
        )
        self.services.registry.note_peer_failure(self.trace.assoc_id, self.note)
        self.trace.emit("timeout", timeout_kind="dimse", timed_out_side="requestor",
                        timeout_s=self.dimse_s, service=self.service)


@dataclass
class _Session:
    """One retrieve step's association and what the step has gathered on it."""

    assoc: Any
    trace: AssociationTrace
    watch: _TimeoutWatch
    request: RetrieveRequest
    model: QueryModel
    outcome: RetrieveOutcome


class RetrieveClient:
    """A node's Query/Retrieve SCU, configured from its declaration."""

    def __init__(self, declaration: StorageNode, services: NodeServices, routes: RetrieveRoutes,
                 store_sub_operation: StoreSubOperation) -> None:
        self.declaration = declaration
        self.services = services
        self.routes = routes
        self.store_sub_operation = store_sub_operation
        self.recorder = services.recorder.bind(node=declaration.name)

    def run(self, request: RetrieveRequest) -> RetrieveOutcome:
        """Open one association to ``request.source``, query, retrieve, and release."""
        model = MODELS[request.model]
        outcome = RetrieveOutcome()
        destination = self.routes.destinations.get(request.source)
        if destination is None:
            outcome.failure = Failure(
                FailureKind.NEVER_ATTEMPTED, None, Side.RUN, True,
                f"no link goes from {self.declaration.name} to {request.source}")
            self.recorder.emit("qr.retrieve_failed", step=request.step, service=request.service,
                               **outcome.failure.as_record())
            return outcome
        trace = AssociationTrace(
            assoc_id=self.services.next_assoc_id(self.declaration.name), node=self.declaration.name,
            link=destination.link, role="requestor", recorder=self.recorder,
            registry=self.services.registry,
        )
        outcome.assoc_id = trace.assoc_id
        watch = _TimeoutWatch(trace, self.services, self.declaration.timeouts.dimse_s,
                              request.service)
        assoc, ae = self._associate(request, model, destination, trace, watch)
        try:
            if assoc is not None:
                self._perform(_Session(assoc, trace, watch, request, model, outcome))
            else:
                outcome.failure = self._association_failure(trace, destination)
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
            ae.shutdown()
        self._emit_finished(trace, request, model, outcome)

        return outcome

    # Negotiation.

    def _associate(self, request: RetrieveRequest, model: QueryModel, destination: Destination,
                   trace: AssociationTrace, watch: _TimeoutWatch) -> tuple[Any, AE]:
        contexts, roles = self._proposal(request, model)
        trace.emit(
            "association.requested", calling_ae=self.declaration.ae_title,
            called_ae=destination.called_ae, peer=destination.node,
            max_pdu_requestor=self.declaration.max_pdu,
            contexts=[{"context_id": 2 * n + 1, "sop_class": c.abstract_syntax,
                       "sop_class_name": describe_uid(c.abstract_syntax),
                       "transfer_syntaxes": list(c.transfer_syntax)}
                      for n, c in enumerate(contexts)],
            role_selection=[{"sop_class": r.sop_class_uid, "scu_role": r.scu_role,
                             "scp_role": r.scp_role} for r in roles],
        )
        handlers = trace.handlers() + [
            (evt.EVT_ABORTED, watch.on_aborted),
            (evt.EVT_DIMSE_SENT, watch.on_message),
            (evt.EVT_DIMSE_RECV, watch.on_message),
        ]
        if request.service == "get":
            handlers.append((evt.EVT_C_STORE, lambda event: self.store_sub_operation(event, trace)))
        ae = AE(ae_title=self.declaration.ae_title)
        configure_ae(ae, self.declaration)
        tls_args = (self.services.tls.client_context(), SERVER_NAME) if self.declaration.tls else None
        assoc = ae.associate(destination.host, destination.port, contexts=contexts,
                             ae_title=destination.called_ae, ext_neg=roles or None,
                             evt_handlers=handlers, max_pdu=self.declaration.max_pdu,
                             tls_args=tls_args)

        return (assoc if assoc.is_established else None), ae

    def _proposal(self, request: RetrieveRequest, model: QueryModel) -> tuple[list[Any], list[Any]]:
        """Return the presentation contexts and SCP/SCU Role Selection items to propose."""
        contexts = [build_context(model.find)]
        if request.service in ("move", "get"):
            contexts.append(build_context(getattr(model, request.service)))
        roles: list[Any] = []
        if request.service != "get":
            return contexts, roles
        for entry in self.declaration.sop_classes:
            if model_of(entry.sop_class) is not None or entry.sop_class == VERIFICATION_SOP_CLASS:
                continue
            for syntax in entry.transfer_syntaxes or self.declaration.transfer_syntaxes:
                if len(contexts) < MAX_CONTEXTS:
                    contexts.append(build_context(entry.sop_class, [syntax]))
            if Role.SCP in entry.roles:
                roles.append(build_role(entry.sop_class, scu_role=Role.SCU in entry.roles,
                                        scp_role=True))

        return contexts, roles

    def _association_failure(self, trace: AssociationTrace, destination: Destination) -> Failure:
        client = StoreClient(self.declaration, self.recorder, self.services.registry,
                             lambda: trace.assoc_id, tls=self.services.tls)
        elapsed_s = time.monotonic() - trace.started_mono
        failure = client._association_failure(trace, destination, elapsed_s)
        trace.emit("association.failed", **failure.as_record())

        return failure

    def _emit_roles(self, trace: AssociationTrace, assoc: Any) -> None:
        """Record, per storage context, the roles proposed and the roles the archive accepted."""
        proposed = assoc.requestor.role_selection
        records = []
        for cx in sorted(assoc.accepted_contexts, key=lambda c: c.context_id or 0):
            if model_of(cx.abstract_syntax) is not None:
                continue
            item = proposed.get(cx.abstract_syntax)
            records.append({
                "context_id": cx.context_id, "sop_class": cx.abstract_syntax,
                "sop_class_name": describe_uid(cx.abstract_syntax),
                "role_selection_proposed": item is not None,
                "requestor_scu": bool(cx.as_scu), "requestor_scp": bool(cx.as_scp),
            })
        trace.emit("qr.roles", contexts=records)

    # The query and the retrieve.

    def _perform(self, session: _Session) -> None:
        request = session.request
        if request.service == "get":
            self._emit_roles(session.trace, session.assoc)
        groups = self._walk(session, 0, {})
        if groups is None or request.service == "find":
            return
        for parents, uids in groups:
            uids = [uid for uid in uids if uid]
            if not uids:
                continue
            identifier = Dataset()
            identifier.QueryRetrieveLevel = request.level
            for keyword, value in parents.items():
                setattr(identifier, keyword, value)
            setattr(identifier, UNIQUE_KEYS[request.level], uids if len(uids) > 1 else uids[0])
            if not self._retrieve(session, identifier, len(uids)):
                return

    def _walk(self, session: _Session, depth: int,
              parents: dict[str, str]) -> list[tuple[dict[str, str], list[str]]] | None:
        """Find the unique keys of every matching entity at the requested level, level by level.

        Return (unique keys of the parent levels, unique keys found) pairs, or
        None when a C-FIND failed.
        """
        request, model = session.request, session.model
        level = model.levels[depth]
        unique = UNIQUE_KEYS[level]
        keys = {k: v for k, v in request.keys.items() if level_of_key(model, k) == level}
        target = depth == model.levels.index(request.level)
        given = keys.get(unique)
        if given and set(keys) == {unique} and not (target and request.service == "find"):
            # Only unique keys at this level: no need to ask the archive for them.
            values = [given] if isinstance(given, str) else list(given)
        else:
            found = self._find(session, level, keys, parents)
            if found is None:
                return None
            values = found
        if target:
            session.outcome.matches += len(values)
            return [(parents, values)]
        groups: list[tuple[dict[str, str], list[str]]] = []
        for value in dict.fromkeys(v for v in values if v):
            below = self._walk(session, depth + 1, {**parents, unique: value})
            if below is None:
                return None
            groups += below

        return groups

    def _find(self, session: _Session, level: str, keys: Mapping[str, Any],
              parents: dict[str, str]) -> list[str] | None:
        """Send one C-FIND; return the unique key of each match, or None when it failed."""
        unique = UNIQUE_KEYS[level]
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword, value in {**parents, **keys}.items():
            setattr(identifier, keyword, value)
        if unique not in identifier:
            setattr(identifier, unique, "")
        if any(not str(v).isascii() for v in keys.values()):
            identifier.SpecificCharacterSet = "ISO_IR 192"
        found: list[str] = []
        final: int | None = None
        session.watch.waiting = True
        session.outcome.requests += 1
        for status, response in session.assoc.send_c_find(identifier, session.model.find):
            if "Status" not in status:
                break
            code = int(status.Status)
            if status_category(code) == "pending":
                found.append(str(response.get(unique, "") or "") if response is not None else "")
                continue
            final = code
        session.watch.waiting = False
        session.trace.emit(
            "qr.find_finished", step=session.request.step, model=session.model.name, level=level,
            query_keys=sorted(set(keys) | set(parents) | {unique}),
            matching_keys=sorted(k for k, v in {**parents, **keys}.items() if v),
            matches=len(found), status=None if final is None else f"0x{final:04X}",
        )
        if final is None:
            session.outcome.failure = self._no_response(session, "find")
            return None
        session.outcome.statuses.append(f"0x{final:04X}")
        if status_category(final) != "success":
            session.outcome.failure = Failure(
                FailureKind.DIMSE_FAILURE, session.trace.link, Side.ACCEPTOR, True,
                f"C-FIND at the {level} level failed with status 0x{final:04X}",
                {"status": f"0x{final:04X}", "service": "find"})
            return None

        return found

    def _retrieve(self, session: _Session, identifier: Dataset, unique_keys: int) -> bool:
        """Send one C-MOVE or C-GET and record every response; return False when the association ended."""
        request, outcome, watch = session.request, session.outcome, session.watch
        command = f"C-{request.service.upper()}-RSP"
        session.trace.emit("qr.retrieve_requested", step=request.step, service=request.service,
                           model=session.model.name, level=request.level, unique_keys=unique_keys,
                           move_destination=self._move_destination(request))
        outcome.requests += 1
        watch.waiting = True
        watch.last_message_mono = time.monotonic()
        if request.service == "move":
            responses = session.assoc.send_c_move(identifier, self._move_destination(request),
                                                  session.model.move)
        else:
            responses = session.assoc.send_c_get(identifier, session.model.get)
        final: Dataset | None = None
        for status, response in responses:
            if "Status" not in status:
                break
            _record_response(session.trace, command, status, response)
            if status_category(int(status.Status)) != "pending":
                final = status
        watch.waiting = False
        if final is None:
            outcome.failure = self._no_response(session, request.service)
            return False
        code = int(final.Status)
        outcome.statuses.append(f"0x{code:04X}")
        for key, keyword in _COUNT_KEYWORDS.items():
            outcome.counts[key] = outcome.counts.get(key, 0) + int(final.get(keyword, 0) or 0)
        if status_category(code) != "success":
            outcome.failure = self._final_failure(session, final)

        return True

    def _move_destination(self, request: RetrieveRequest) -> str | None:
        if request.service != "move":
            return None
        return request.move_destination or self.declaration.ae_title

    # Classification from the requestor's evidence.

    def _final_failure(self, session: _Session, final: Dataset) -> Failure:
        request, link = session.request, session.trace.link
        code = int(final.Status)
        counts = {key: int(final.get(keyword, 0) or 0) for key, keyword in _COUNT_KEYWORDS.items()}
        detail: dict[str, Any] = {"status": f"0x{code:04X}", "service": request.service, **counts}
        if code == 0xA801:
            # pynetdicom 3.0.4 also responds 0xA801 when it cannot associate with a
            # destination it knows; the archive's ledger rows tell the two apart.
            destination = self._move_destination(request)
            return Failure(FailureKind.MOVE_DESTINATION_UNKNOWN, link, Side.ACCEPTOR, True,
                           f"{request.source} responded 0xA801 for the Move Destination "
                           f"{destination!r}: it does not know it, or could not associate with it",
                           {**detail, "move_destination": destination})
        without_role = _contexts_without_scp_role(session.assoc) if request.service == "get" else []
        if without_role and counts["failed"]:
            return Failure(
                FailureKind.SUB_OPERATION_FAILED, link, Side.REQUESTOR, True,
                f"{counts['failed']} C-STORE sub-operations of the C-GET failed: "
                f"{', '.join(describe_uid(uid) for uid in without_role)} was accepted without the "
                "SCP role for the requestor, which proposed no SCP/SCU Role Selection for it",
                {**detail, "cause": "role-not-negotiated", "sop_classes_without_scp_role": without_role},
            )
        category = status_category(code)
        kind = (FailureKind.SUB_OPERATION_FAILED if counts["failed"] or category == "warning"
                else FailureKind.DIMSE_FAILURE)
        return Failure(
            kind, link, Side.ACCEPTOR, category == "failure",
            f"C-{request.service.upper()} ended with status 0x{code:04X} ({category}): "
            f"{counts['completed']} completed, {counts['failed']} failed, "
            f"{counts['warning']} warning", detail,
        )

    def _no_response(self, session: _Session, service: str) -> Failure:
        trace, note = session.trace, session.watch.note
        if note is not None:
            data_link = (self.routes.returns.get(session.request.source) if service == "move"
                         else trace.link)
            direction = "upstream" if service == "move" else "downstream"
            evidence = link_speed_evidence(self.routes, data_link, direction, None)
            side = Side.ACCEPTOR if evidence["category"] == SLOW_PEER else Side.REQUESTOR
            return Failure(note.failure_kind, note.hop, side, False, note.reason,
                           {**note.detail, **evidence})
        if trace.abort_received is not None:
            return Failure(FailureKind.ASSOCIATION_ABORTED, trace.link, Side.ACCEPTOR, False,
                           f"A-ABORT from {session.request.source} during the C-{service.upper()}",
                           dict(trace.abort_received))
        return Failure(FailureKind.CONNECTION_CLOSED, trace.link, Side.ACCEPTOR, False,
                       f"the connection closed during the C-{service.upper()} (A-P-ABORT)", {})

    def _emit_finished(self, trace: AssociationTrace, request: RetrieveRequest,
                       model: QueryModel, outcome: RetrieveOutcome) -> None:
        fields: dict[str, Any] = {
            "step": request.step, "service": request.service, "model": model.name,
            "level": request.level, "source": request.source, "matches": outcome.matches,
            "requests": outcome.requests, "statuses": outcome.statuses, **outcome.counts,
        }
        if outcome.failure is None:
            trace.emit("qr.retrieve_finished", **fields)
            return
        trace.emit("qr.retrieve_failed", **fields, **outcome.failure.as_record())


def _record_response(trace: AssociationTrace, command: str, status: Dataset,
                     response: Dataset | None) -> None:
    code = int(status.Status)
    fields: dict[str, Any] = {"command": command, "status": f"0x{code:04X}",
                              "status_category": status_category(code)}
    for key, keyword in _COUNT_KEYWORDS.items():
        if keyword in status and status[keyword].value is not None:
            fields[key] = int(status[keyword].value)
    if response is not None and "FailedSOPInstanceUIDList" in response:
        value = response.FailedSOPInstanceUIDList
        fields["failed_sop_instance_uids"] = [value] if isinstance(value, str) else [str(v) for v in value]
    if "ErrorComment" in status:
        fields["error_comment"] = str(status.ErrorComment)
    trace.emit("qr.response", **fields)


def _contexts_without_scp_role(assoc: Any) -> list[str]:
    """Return the storage SOP classes accepted without the SCP role and without a role selection item."""
    proposed = assoc.requestor.role_selection
    return list(dict.fromkeys(
        cx.abstract_syntax for cx in assoc.accepted_contexts
        if model_of(cx.abstract_syntax) is None and not cx.as_scp
        and cx.abstract_syntax not in proposed))
