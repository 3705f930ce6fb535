"""PDU lengths and time budgets of one hop.

PDU lengths. pynetdicom fills each P-DATA-TF with data up to the
acceptor's Maximum Length (0 means unlimited, so a whole data set goes
in one PDU). A ``clamp_max_length`` fault rewrites that value to at most
its ``max_length``. A ``middlebox_limit`` fault ends the connection at the
first PDU longer than its ``max_pdu_length``: a reset (the requestor gets
the connection closed) or an A-ABORT (source 2) to both peers.

Time budgets, from pynetdicom 3.0.4's behaviour:

- the requestor queues a whole C-STORE-RQ and then waits up to its DIMSE
  timeout for the response, so the transfer time at the link's upstream
  bandwidth plus the round trip of both latencies must fit in it;
- the acceptor restarts its idle timer only when a whole PDU has arrived,
  so one PDU's transfer time, and the gap between two C-STOREs (the
  sender's pause plus the round trip), must fit in its network timeout;
- a firewall's ``idle_timeout_s`` black-holes a connection idle that long.
  The next C-STORE then waits for the requestor's DIMSE timeout or the
  acceptor's network timeout, and the link's note of the black hole names
  the failure whichever fires first.

A time within :data:`RISK_FRACTION` of its limit is a risk, not a failure.
"""

from __future__ import annotations

import math

from simulator.capability.conditions import LinkConditions
from simulator.capability.routes import HopPlan
from simulator.capability.verdicts import (
    Verdict,
    acse_timeout,
    blackholed,
    dimse_timeout,
    network_timeout,
    pdu_over_limit,
)

RISK_FRACTION = 0.8
"""A predicted time above this fraction of its timeout is reported as at risk."""
PDU_HEADER_BYTES = 6
"""The P-DATA-TF PDV item header: 4-byte item length, context ID and control header."""
BYTES_PER_KB = 1000


def effective_max_length(receiver_max_pdu: int, clamp: int | None) -> float:
    """Return the acceptor's Maximum Length after a clamp fault; math.inf for unlimited."""
    value = float(receiver_max_pdu) if receiver_max_pdu else math.inf
    if clamp is not None:
        value = min(value, float(clamp))

    return value


def pdu_verdicts(hop: HopPlan, conditions: LinkConditions,
                 dataset_bytes: int | None) -> list[Verdict]:
    """Predict what a middle box PDU limit does to the largest P-DATA-TF of this instance."""
    # NOTE: only P-DATA-TF is checked; an A-ASSOCIATE-RQ with many contexts can also
    # exceed a small limit (about 60 bytes per context), and that is not predicted.
    middlebox = conditions.middlebox
    if middlebox is None:
        return []
    limit = int(middlebox.attributes["max_pdu_length"])
    max_length = effective_max_length(hop.receiver.max_pdu, conditions.clamp_max_length)
    link = hop.link.link_name
    if dataset_bytes is None:
        if max_length <= limit:
            return []
        reason = (f"the middle box on {link} passes PDUs up to {limit} bytes but "
               f"{hop.receiver.name} accepts PDUs up to {_length_text(max_length)}; "
               f"data sets over {limit - PDU_HEADER_BYTES} bytes would be cut off")
        return [Verdict(pdu_over_limit(link, reason), certain=False)]
    largest = min(max_length, dataset_bytes + PDU_HEADER_BYTES)
    if largest <= limit:
        return []
    reason = (f"the middle box on {link} passes PDUs up to {limit} bytes, but the data set "
           f"({dataset_bytes} bytes) goes in PDUs of {int(largest)} bytes because "
           f"{hop.receiver.name} accepts up to {_length_text(max_length)}"
           + ("" if conditions.clamp_max_length is None else " after the clamp")
           + "; add a clamp_max_length fault or lower max_pdu")

    return [Verdict(pdu_over_limit(link, reason), middlebox.certain)]


def _length_text(value: float) -> str:
    return "any length" if math.isinf(value) else f"{int(value)} bytes"


def timing_verdicts(hop: HopPlan, conditions: LinkConditions, dataset_bytes: int | None,
                    position: int, pause_between_s: float) -> list[Verdict]:
    """Predict the timeouts of sending this instance as item ``position`` of its association."""
    verdicts = _acse_verdicts(hop, conditions)
    pause_s = pause_between_s if position else 0.0
    idle_s = conditions.round_trip_s + pause_s
    blackhole = _blackhole_verdict(hop, conditions, idle_s)
    if blackhole is not None:
        return verdicts + [blackhole]
    verdicts += _idle_verdicts(hop, idle_s)
    verdicts += _transfer_verdicts(hop, conditions, dataset_bytes)

    return verdicts


def _acse_verdicts(hop: HopPlan, conditions: LinkConditions) -> list[Verdict]:
    acse_s = hop.sender.timeouts.acse_s
    needed_s = conditions.round_trip_s
    if acse_s is None or needed_s <= RISK_FRACTION * acse_s:
        return []
    reason = (f"negotiation needs about {needed_s:.2f} s of latency on {hop.link.link_name}; "
           f"{hop.sender.name}'s ACSE timeout is {acse_s} s")

    return [Verdict(acse_timeout(hop.link.link_name, acse_s, reason), needed_s > acse_s)]


def _blackhole_verdict(hop: HopPlan, conditions: LinkConditions,
                       idle_s: float) -> Verdict | None:
    """Predict a firewall black hole; the link's note of it outranks the timeout that follows."""
    firewall = conditions.firewall
    if firewall is None or firewall.idle_timeout_s is None or idle_s < firewall.idle_timeout_s:
        return None
    link = hop.link.link_name
    dimse_s = hop.sender.timeouts.dimse_s
    network_s = hop.receiver.timeouts.network_s
    reason = (f"the firewall on {link} black-holes connections idle for "
           f"{firewall.idle_timeout_s} s, and {hop.sender.name} is idle about {idle_s:.2f} s "
           "before this C-STORE")
    if dimse_s is None and network_s is None:
        reason += "; with no DIMSE or network timeout the association hangs until the run ends"
        return Verdict(blackholed(link, reason), certain=False)
    waits = []
    if dimse_s is not None:
        waits.append(f"{hop.sender.name}'s DIMSE timeout ({dimse_s} s)")
    if network_s is not None:
        waits.append(f"{hop.receiver.name}'s network timeout ({network_s} s)")

    return Verdict(blackholed(link, f"{reason}; it ends at {' or '.join(waits)}"))


def _idle_verdicts(hop: HopPlan, idle_s: float) -> list[Verdict]:
    network_s = hop.receiver.timeouts.network_s
    if network_s is None or idle_s <= RISK_FRACTION * network_s:
        return []
    reason = (f"{hop.receiver.name} waits about {idle_s:.2f} s for this C-STORE (pause and round "
           f"trip) and its network timeout is {network_s} s")

    return [Verdict(network_timeout(hop.link.link_name, hop.receiver.name, network_s, reason),
                    idle_s >= network_s)]


def _transfer_verdicts(hop: HopPlan, conditions: LinkConditions,
                       dataset_bytes: int | None) -> list[Verdict]:
    rate = conditions.rate_kb_per_s
    round_trip_s = conditions.round_trip_s
    link = hop.link.link_name
    dimse_s = hop.sender.timeouts.dimse_s
    network_s = hop.receiver.timeouts.network_s
    if dataset_bytes is None:
        return _unknown_size_verdicts(hop, conditions)
    stall_s = conditions.stall_ms / 1000
    transfer_s = 0.0 if rate is None else dataset_bytes / (rate * BYTES_PER_KB)
    response_s = transfer_s + round_trip_s + stall_s
    max_length = effective_max_length(hop.receiver.max_pdu, conditions.clamp_max_length)
    pdu_s = 0.0 if rate is None else min(max_length, dataset_bytes) / (rate * BYTES_PER_KB)
    # A stall keeps the data set back after the command, so the acceptor waits that long too.
    gap_s = max(pdu_s, stall_s)
    rate_text = "" if rate is None else f" at {rate:g} KB/s"
    if stall_s:
        rate_text += f" with a {stall_s:g} s stall"
    candidates: list[tuple[float, Verdict]] = []
    if network_s is not None and gap_s > RISK_FRACTION * network_s:
        reason = (f"{hop.receiver.name} waits {gap_s:.1f} s for a whole PDU of this "
               f"{dataset_bytes}-byte data set{rate_text} on {link}, and aborts after "
               f"{network_s} s without one")
        verdict = Verdict(network_timeout(link, hop.receiver.name, network_s, reason),
                          gap_s >= network_s)
        candidates.append((network_s, verdict))
    if dimse_s is not None and response_s > RISK_FRACTION * dimse_s:
        reason = (f"sending this {dataset_bytes}-byte data set takes {response_s:.1f} s{rate_text} "
               f"on {link} with its latency, longer than {hop.sender.name}'s DIMSE timeout "
               f"({dimse_s} s)" if response_s > dimse_s else
               f"sending this {dataset_bytes}-byte data set takes {response_s:.1f} s{rate_text}"
               f" on {link}, close to {hop.sender.name}'s DIMSE timeout ({dimse_s} s)")
        candidates.append((dimse_s, Verdict(dimse_timeout(link, dimse_s, reason),
                                            response_s > dimse_s)))
    candidates.sort(key=lambda pair: (not pair[1].certain, pair[0]))

    return [verdict for _, verdict in candidates[:1]] + [v for _, v in candidates[1:]
                                                         if not v.certain]


def _unknown_size_verdicts(hop: HopPlan, conditions: LinkConditions) -> list[Verdict]:
    rate = conditions.rate_kb_per_s
    dimse_s = hop.sender.timeouts.dimse_s
    if rate is None or dimse_s is None:
        return []
    limit_bytes = int((dimse_s - conditions.round_trip_s) * rate * BYTES_PER_KB)
    reason = (f"{hop.link.link_name} is limited to {rate:g} KB/s, so data sets over about "
           f"{limit_bytes} bytes outlast {hop.sender.name}'s DIMSE timeout ({dimse_s} s)")

    return [Verdict(dimse_timeout(hop.link.link_name, dimse_s, reason), certain=False)]


def budget_note(hop: HopPlan, conditions: LinkConditions, dataset_bytes: int | None) -> str | None:
    """Describe the time a hop needs for this data set, when the link slows it down."""
    rate = conditions.rate_kb_per_s
    if rate is None and not conditions.round_trip_s:
        return None
    transfer_s = 0.0 if rate is None or dataset_bytes is None else dataset_bytes / (rate * 1000)
    parts = [f"round trip {conditions.round_trip_s:.3f} s"]
    if rate is not None:
        parts.append(f"{rate:g} KB/s upstream")
    if dataset_bytes is not None:
        parts.append(f"{dataset_bytes} bytes need about {transfer_s + conditions.round_trip_s:.2f} s")
    dimse_s = hop.sender.timeouts.dimse_s
    network_s = hop.receiver.timeouts.network_s

    return (f"budget on {hop.link.link_name}: {', '.join(parts)}; DIMSE timeout of "
            f"{hop.sender.name} {dimse_s} s, network timeout of {hop.receiver.name} {network_s} s")
