"""Differences between a declared node and the probed system: drift between conformance and product.

Each :class:`Drift` has a kind:

- ``missing``: the declaration promises it, the system does not do it, so
  a run with the declaration predicts deliveries that would fail;
- ``different``: a value differs (maximum PDU length, AE title checks);
- ``undeclared``: the system does it and the declaration does not say so,
  so the simulation is stricter than the product.

Only what the probe tried is compared: SOP classes and transfer syntaxes
that were not probed are reported once as not probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.capability.probe_yaml import ProbeFile
from simulator.conformance.names import describe_uid
from simulator.topology.model import NodeBase, Role

MISSING = "missing"
DIFFERENT = "different"
UNDECLARED = "undeclared"
NOT_PROBED = "not-probed"


@dataclass(frozen=True)
class Drift:
    kind: str
    aspect: str
    message: str
    sop_class: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "aspect": self.aspect, "sop_class": self.sop_class,
                "message": self.message}


def compare_declaration(declared: NodeBase, probed: ProbeFile) -> list[Drift]:
    """Return every difference between a declared node and a probed system."""
    return (_association_drift(declared, probed) + _sop_class_drift(declared, probed))


def drift_matters(drifts: list[Drift]) -> bool:
    """True when a difference would make the simulation accept what the system rejects."""
    return any(d.kind in (MISSING, DIFFERENT) for d in drifts)


def _association_drift(declared: NodeBase, probed: ProbeFile) -> list[Drift]:
    system = probed.node
    found: list[Drift] = []
    if declared.max_pdu != system.max_pdu:
        found.append(Drift(DIFFERENT, "max_pdu",
                           f"declared max_pdu {declared.max_pdu}, the system accepts PDUs up to "
                           f"{system.max_pdu} bytes"))
    checks_called = probed.meta.get("checks_called_ae")
    if checks_called is not None and declared.check_called_ae != checks_called:
        found.append(Drift(DIFFERENT, "check_called_ae",
                           f"declared check_called_ae {declared.check_called_ae}, but the system "
                           f"{'rejects' if checks_called else 'accepts'} a bogus called AE title"))
    if checks_called and declared.ae_title.strip() != system.ae_title.strip():
        found.append(Drift(DIFFERENT, "ae_title",
                           f"declared ae_title {declared.ae_title!r}, but the system checks the "
                           f"called AE title and answered to {system.ae_title!r}"))
    checks_calling = probed.meta.get("checks_calling_ae")
    if checks_calling and declared.accept_calling_ae is None:
        found.append(Drift(DIFFERENT, "accept_calling_ae",
                           "declared to accept any calling AE title, but the system rejects a "
                           "bogus one; list the calling AE titles it accepts"))
    if checks_calling is False and declared.accept_calling_ae is not None:
        found.append(Drift(UNDECLARED, "accept_calling_ae",
                           "declared to accept only some calling AE titles, but the system "
                           "accepts a bogus one"))

    return found


def _sop_class_drift(declared: NodeBase, probed: ProbeFile) -> list[Drift]:
    system = probed.node
    found: list[Drift] = []
    declared_classes = {e.sop_class for e in declared.sop_classes if Role.SCP in e.roles}
    accepted_classes = {e.sop_class for e in system.sop_classes if Role.SCP in e.roles}
    not_probed = sorted(declared_classes - probed.probed_sop_classes)
    for sop_class in sorted(declared_classes & probed.probed_sop_classes):
        name = describe_uid(sop_class)
        if sop_class not in accepted_classes:
            found.append(Drift(MISSING, "sop_class", f"{name} is declared with the SCP role, "
                               "but the system rejects every transfer syntax for it", sop_class))
            continue
        found += _syntax_drift(declared, probed, sop_class)
    for sop_class in sorted(accepted_classes - declared_classes):
        found.append(Drift(UNDECLARED, "sop_class",
                           f"the system accepts {describe_uid(sop_class)}, which is not declared "
                           "with the SCP role", sop_class))
    if not_probed:
        found.append(Drift(NOT_PROBED, "sop_class", "not probed, so not compared: "
                           + ", ".join(describe_uid(c) for c in not_probed)))

    return found


def _syntax_drift(declared: NodeBase, probed: ProbeFile, sop_class: str) -> list[Drift]:
    name = describe_uid(sop_class)
    promised = set(declared.transfer_syntaxes_for(sop_class)) & probed.probed_transfer_syntaxes
    accepted = set(probed.node.transfer_syntaxes_for(sop_class))
    found = [
        Drift(MISSING, "transfer_syntax",
              f"{name} with {describe_uid(ts)} is declared, but the system rejects it", sop_class)
        for ts in sorted(promised - accepted)
    ]
    found += [
        Drift(UNDECLARED, "transfer_syntax",
              f"the system accepts {name} with {describe_uid(ts)}, which is not declared", sop_class)
        for ts in sorted(accepted - set(declared.transfer_syntaxes_for(sop_class)))
    ]

    return found
