"""The conditions on one link that the check can predict from: its faults and its firewall.

A fault with toxicity 1 applies to every connection, so what it causes is
predicted as certain. A fault with a lower toxicity applies to some
connections only, so what it causes is a risk. Faults whose effect depends
on the position in the byte stream (``reset_peer``, ``timeout``,
``limit_data``, ``abort``, ``corrupt_pdu``) are risks of the failure kind
they usually cause. ``slicer``, ``slow_close`` and ``hold_release`` change
no ledger row, because every C-STORE-RSP has arrived before they act or
they lose no byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.capability.senders import SiteState
from simulator.links.faults import FaultSpec
from simulator.links.firewall import FirewallSpec
from simulator.recording.failures import FailureKind

_PREDICTED_TYPES = {
    "latency", "bandwidth", "down", "middlebox_limit", "clamp_max_length",
    "associate_reject", "answer_status", "stall",
}
_RISK_KINDS = {
    "reset_peer": FailureKind.CONNECTION_RESET,
    "timeout": FailureKind.CONNECTION_CLOSED,
    "limit_data": FailureKind.CONNECTION_CLOSED,
    "abort": FailureKind.ASSOCIATION_ABORTED,
    "corrupt_pdu": FailureKind.ASSOCIATION_ABORTED,
}
"""The failure kind the link notes for a fault of these types (``abort`` with kind
a-p-abort notes connection-closed)."""


@dataclass(frozen=True)
class Applied:
    """A fault's attributes and whether it applies to every connection."""

    name: str
    attributes: dict[str, Any]
    certain: bool


@dataclass
class LinkConditions:
    """The effect of one link's faults and firewall on the traffic the check predicts."""

    link: str
    rate_kb_per_s: float | None = None
    """Upstream (client to server) bandwidth, 1 KB = 1000 bytes, as the bandwidth fault counts."""
    latency_up_ms: float = 0.0
    latency_down_ms: float = 0.0
    down: Applied | None = None
    associate_reject: Applied | None = None
    answer_status: list[Applied] = field(default_factory=list)
    middlebox: Applied | None = None
    clamp_max_length: int | None = None
    stall_ms: float = 0.0
    """Hold time of each C-STORE-RQ data set upstream, from stall faults."""
    firewall: FirewallSpec | None = None
    uncertain: list[str] = field(default_factory=list)
    """Faults that apply to some connections only (toxicity below 1)."""
    risky: list[tuple[str, FailureKind]] = field(default_factory=list)
    """Faults that may break an association, with the failure kind they usually cause."""
    not_predicted: list[str] = field(default_factory=list)
    """Faults that change no ledger row, listed in the hop's notes."""

    @property
    def round_trip_s(self) -> float:
        return (self.latency_up_ms + self.latency_down_ms) / 1000


def link_conditions(link: str, state: SiteState) -> LinkConditions:
    conditions = LinkConditions(link, firewall=state.firewalls.get(link))
    for spec in state.faults.get(link, ()):
        _add_fault(conditions, spec)

    return conditions


def _add_fault(conditions: LinkConditions, spec: FaultSpec) -> None:
    if spec.toxicity <= 0:
        return
    certain = spec.toxicity >= 1
    attributes = dict(spec.attributes)
    applied = Applied(spec.name, attributes, certain)
    label = f"{spec.name} ({spec.type}, toxicity {spec.toxicity:g})"
    if spec.type in _RISK_KINDS:
        conditions.risky.append((label, _RISK_KINDS[spec.type]))
        return
    if spec.type not in _PREDICTED_TYPES:
        conditions.not_predicted.append(label)
        return
    if not certain:
        conditions.uncertain.append(label)
    if spec.type == "latency":
        # The worst draw is latency + jitter - 1 ms; NOTE: two latency faults on one
        # direction do not add up in the proxy (the larger wins), and neither do they here.
        delay_ms = float(attributes.get("latency", 0)) + max(0, int(attributes.get("jitter", 0)) - 1)
        if spec.direction == "upstream":
            conditions.latency_up_ms = max(conditions.latency_up_ms, delay_ms)
        else:
            conditions.latency_down_ms = max(conditions.latency_down_ms, delay_ms)
    elif spec.type == "bandwidth" and spec.direction == "upstream":
        rate = float(attributes["rate"])
        current = conditions.rate_kb_per_s
        conditions.rate_kb_per_s = rate if current is None else min(current, rate)
    elif spec.type == "down":
        conditions.down = applied
    elif spec.type == "associate_reject":
        conditions.associate_reject = applied
    elif spec.type == "answer_status" and spec.direction == "upstream":
        conditions.answer_status.append(applied)
    elif spec.type == "middlebox_limit":
        conditions.middlebox = applied
    elif spec.type == "clamp_max_length" and certain:
        conditions.clamp_max_length = int(attributes["max_length"])
    elif spec.type == "stall" and not certain:
        conditions.risky.append((label, FailureKind.DIMSE_TIMEOUT))
    elif spec.type == "stall" and spec.direction == "upstream" \
            and attributes.get("command") in (None, "C-STORE-RQ"):
        conditions.stall_ms = max(conditions.stall_ms, float(attributes["delay_ms"]))
