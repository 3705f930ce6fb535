"""Discover what a live DICOM system accepts, association by association.

The probe proposes every (SOP class, transfer syntax) pair in its own
presentation context, at most 128 per association (the PS3.8 limit). It
proposes them first with the default roles and then, for the storage
classes, with an SCP/SCU role selection item that offers the requestor
both roles. It records the
accepted pairs, the acceptor's Maximum Length, its implementation class UID
and version name, and whether it rejects a bogus called AE title and a bogus
calling AE title.

The probe is gentle and narrow: it talks only to the one host and port it
is given and pauses between associations. It plans every association
before the first one and raises ProbeError, sending nothing, when the plan
needs more than the limit. It sends no DIMSE message at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from simulator.capability.errors import ProbeError
from simulator.conformance.names import STORAGE_SOP_CLASS_UIDS
from simulator.nodes.association import association_socket, set_tcp_nodelay
from simulator.recording.failures import rejection_names

MAX_CONTEXTS = 128
"""PS3.8 allows at most 128 presentation contexts (odd IDs 1 to 255) per association."""

PROBE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)
"""The transfer syntaxes the probe proposes for every SOP class."""

QUERY_RETRIEVE_SOP_CLASSES: tuple[str, ...] = (
    str(PatientRootQueryRetrieveInformationModelFind),
    str(PatientRootQueryRetrieveInformationModelMove),
    str(PatientRootQueryRetrieveInformationModelGet),
    str(StudyRootQueryRetrieveInformationModelFind),
    str(StudyRootQueryRetrieveInformationModelMove),
    str(StudyRootQueryRetrieveInformationModelGet),
)
VERIFICATION_SOP_CLASS = str(Verification)

BOGUS_AE_TITLE = "REHEARSE_BOGUS"
"""An AE title no system should expect, for the called and calling AE title checks."""
DEFAULT_CALLING_AE = "REHEARSE_PROBE"
DEFAULT_PAUSE_S = 0.2
DEFAULT_MAX_ASSOCIATIONS = 60
DEFAULT_TIMEOUT_S = 10.0
REQUESTOR_MAX_PDU = 16382


@dataclass(frozen=True)
class ProbeOptions:
    """Target and limits of one probe; ``sop_classes`` None probes every storage class and the others."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = DEFAULT_CALLING_AE
    pause_s: float = DEFAULT_PAUSE_S
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    sop_classes: tuple[str, ...] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass
class AssociationAnswer:
    """The response one association of the probe got: accepted contexts, or a rejection."""

    purpose: str
    accepted: list[tuple[str, str, bool | None, bool | None]] = field(default_factory=list)
    """(SOP class, transfer syntax, requestor may act as SCU, requestor may act as SCP)."""
    rejection: dict[str, Any] | None = None
    aborted: bool = False
    max_pdu: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None

    @property
    def answered(self) -> bool:
        """True when the acceptor sent an A-ASSOCIATE-AC."""
        return self.max_pdu is not None


@dataclass
class ProbeResult:
    """The probed system's accepted contexts, maximum PDU length and AE title checks."""

    options: ProbeOptions
    probed_sop_classes: list[str]
    accepted: dict[str, list[str]] = field(default_factory=dict)
    """Transfer syntaxes accepted per SOP class with the default roles (the system as SCP)."""
    scu_role: dict[str, list[str]] = field(default_factory=dict)
    """Per storage SOP class, the transfer syntaxes for which it agreed to act as SCU."""
    max_pdu: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    called_ae_check: AssociationAnswer | None = None
    """The association that called a bogus AE title."""
    calling_ae_check: AssociationAnswer | None = None
    """The association from a bogus calling AE title."""
    associations: int = 0

    @property
    def checks_called_ae(self) -> bool | None:
        """True when a bogus called AE title is rejected; None when that association got no response."""
        return _checks(self.called_ae_check)

    @property
    def checks_calling_ae(self) -> bool | None:
        """True when a bogus calling AE title is rejected; None when that association got no response."""
        return _checks(self.calling_ae_check)


def _checks(answer: AssociationAnswer | None) -> bool | None:
    if answer is None:
        return None
    if answer.rejection is not None:
        return True

    return False if answer.answered else None


@dataclass(frozen=True)
class _Batch:
    purpose: str
    contexts: list[PresentationContext]
    roles: list[Any] = field(default_factory=list)
    called_ae: str | None = None
    calling_ae: str | None = None


def plan_batches(options: ProbeOptions) -> list[_Batch]:
    """Return every association the probe opens, in order."""
    others = [VERIFICATION_SOP_CLASS, *QUERY_RETRIEVE_SOP_CLASSES]
    if options.sop_classes is None:
        storage = sorted(STORAGE_SOP_CLASS_UIDS)
    else:
        # Named classes other than Verification and Query/Retrieve get role selection too,
        # so a private storage class UID can be probed.
        storage = [c for c in options.sop_classes if c not in others]
        others = [c for c in others if c in options.sop_classes]
    pairs = [(c, ts) for c in [*others, *storage] for ts in PROBE_TRANSFER_SYNTAXES]
    batches = [_Batch("acceptance", [build_context(c, [ts]) for c, ts in chunk])
               for chunk in _chunks(pairs, MAX_CONTEXTS)]
    storage_pairs = [(c, ts) for c in storage for ts in PROBE_TRANSFER_SYNTAXES]
    for chunk in _chunks(storage_pairs, MAX_CONTEXTS):
        classes = list(dict.fromkeys(c for c, _ in chunk))
        batches.append(_Batch("role-selection", [build_context(c, [ts]) for c, ts in chunk],
                              [build_role(c, scu_role=True, scp_role=True) for c in classes]))
    echo = [build_context(VERIFICATION_SOP_CLASS, [uid.ImplicitVRLittleEndian])]
    batches.append(_Batch("called-ae-check", echo, called_ae=BOGUS_AE_TITLE))
    batches.append(_Batch("calling-ae-check", echo, calling_ae=BOGUS_AE_TITLE))

    return batches


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def probe_system(options: ProbeOptions,
                 on_association: Callable[[int, int, str], None] | None = None) -> ProbeResult:
    """Probe the system at ``options.host``:``options.port``; raise ProbeError on bad input.

    ``on_association`` is called before each association with (number, total, purpose).
    """
    _validate(options)
    batches = plan_batches(options)
    if len(batches) > options.max_associations:
        raise ProbeError(
            f"the probe needs {len(batches)} associations, more than --max-associations "
            f"{options.max_associations}; raise the limit or name fewer SOP classes with --sop-classes"
        )
    probed = list(dict.fromkeys(str(cx.abstract_syntax) for b in batches for cx in b.contexts
                                if b.purpose == "acceptance"))
    result = ProbeResult(options, probed)
    for number, batch in enumerate(batches, start=1):
        if number > 1 and options.pause_s:
            time.sleep(options.pause_s)
        if on_association is not None:
            on_association(number, len(batches), batch.purpose)
        answer = _associate(options, batch)
        result.associations += 1
        _record(result, batch, answer)

    return result


def _validate(options: ProbeOptions) -> None:
    if not options.host or not options.host.strip():
        raise ProbeError("no host given: name the host of the system to probe")
    if options.host.strip() in ("0.0.0.0", "::", "255.255.255.255"):
        raise ProbeError(f"host {options.host!r} is not one system; name the host to probe")
    if not 1 <= options.port <= 65535:
        raise ProbeError(f"port {options.port} is invalid; give 1 to 65535")
    if options.pause_s < 0:
        raise ProbeError(f"--pause-s {options.pause_s} is invalid; give 0 or more seconds")
    if options.max_associations < 1:
        raise ProbeError(f"--max-associations {options.max_associations} is invalid; give 1 or more")
    for title, label in ((options.called_ae, "called"), (options.calling_ae, "calling")):
        if not title.strip() or len(title) > 16:
            raise ProbeError(f"{label} AE title {title!r} is invalid; give 1 to 16 characters")


def _record(result: ProbeResult, batch: _Batch, answer: AssociationAnswer) -> None:
    if batch.purpose == "called-ae-check":
        result.called_ae_check = answer
        return
    if batch.purpose == "calling-ae-check":
        result.calling_ae_check = answer
        return
    if answer.rejection is not None:
        raise ProbeError(
            f"{result.options.host}:{result.options.port} rejected the probe's association "
            f"(A-ASSOCIATE-RJ {answer.rejection['result']}/{answer.rejection['source']}/"
            f"{answer.rejection['reason']}: {answer.rejection['reason_name']}); check "
            "--called-ae and --calling-ae against what the system expects"
        )
    if not answer.answered:
        raise ProbeError(
            f"{result.options.host}:{result.options.port} did not respond to the A-ASSOCIATE-RQ "
            f"of the {batch.purpose} association; check host, port and that it speaks DICOM "
            "without TLS"
        )
    if result.max_pdu is None:
        result.max_pdu = answer.max_pdu
        result.implementation_class_uid = answer.implementation_class_uid
        result.implementation_version_name = answer.implementation_version_name
    for sop_class, syntax, as_scu, as_scp in answer.accepted:
        if batch.purpose == "acceptance":
            result.accepted.setdefault(sop_class, []).append(syntax)
        elif as_scp:
            # The requestor may act as SCP, so the probed system acts as SCU.
            result.scu_role.setdefault(sop_class, []).append(syntax)


def _associate(options: ProbeOptions, batch: _Batch) -> AssociationAnswer:
    answer = AssociationAnswer(batch.purpose)
    ae = AE(ae_title=batch.calling_ae or options.calling_ae)
    ae.acse_timeout = options.timeout_s
    ae.dimse_timeout = options.timeout_s
    ae.network_timeout = options.timeout_s
    ae.connection_timeout = options.timeout_s
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, lambda event: set_tcp_nodelay(association_socket(event.assoc))),
        (evt.EVT_PDU_RECV, lambda event: _on_pdu(answer, event)),
        (evt.EVT_ACCEPTED, lambda event: _on_accepted(answer, event)),
    ]
    try:
        assoc = ae.associate(
            options.host, options.port, contexts=batch.contexts,
            ae_title=batch.called_ae or options.called_ae, max_pdu=REQUESTOR_MAX_PDU,
            ext_neg=batch.roles or None, evt_handlers=handlers,
        )
        if assoc.is_established:
            assoc.release()
        answer.aborted = assoc.is_aborted and answer.rejection is None
    finally:
        ae.shutdown()

    return answer


def _on_pdu(answer: AssociationAnswer, event: Any) -> None:
    pdu = event.pdu
    if isinstance(pdu, A_ASSOCIATE_RJ):
        answer.rejection = rejection_names(pdu.result or 0, pdu.source or 0,
                                           pdu.reason_diagnostic or 0)


def _on_accepted(answer: AssociationAnswer, event: Any) -> None:
    assoc = event.assoc
    answer.max_pdu = assoc.acceptor.maximum_length
    answer.implementation_class_uid = assoc.acceptor.implementation_class_uid
    answer.implementation_version_name = assoc.acceptor.implementation_version_name
    answer.accepted = [(cx.abstract_syntax, cx.transfer_syntax[0], cx.as_scu, cx.as_scp)
                       for cx in assoc.accepted_contexts]
