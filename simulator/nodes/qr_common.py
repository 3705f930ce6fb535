"""Helpers for both ends of a Query/Retrieve exchange: the site's routes and timeout evidence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from simulator.nodes.scu import Destination
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.topology.model import Topology

LinkFaults = Callable[[str], Sequence[Any]]
"""link name -> the fault specs active on it now (``type``, ``direction``, ``attributes``)."""

TIMEOUT_VS_LINK_SPEED = "timeout-vs-link-speed"
SLOW_PEER = "slow-peer"


def _no_faults(_link: str) -> Sequence[Any]:
    return ()


@dataclass
class RetrieveRoutes:
    """One node's view of the site: its outgoing links, who calls it, and every AE title."""

    node: str
    destinations: dict[str, Destination] = field(default_factory=dict)
    requestors: dict[str, str] = field(default_factory=dict)
    returns: dict[str, str] = field(default_factory=dict)
    nodes_by_ae: dict[str, str] = field(default_factory=dict)
    link_faults: LinkFaults = _no_faults

    @classmethod
    def build(cls, node: str, topology: Topology, destinations: dict[str, Destination],
              link_faults: LinkFaults) -> RetrieveRoutes:
        """Collect the links into and out of ``node`` from the topology."""
        return cls(
            node=node,
            destinations=dict(destinations),
            requestors={lk.link_name: lk.from_node for lk in topology.links if lk.to_node == node},
            returns={lk.from_node: lk.link_name for lk in topology.links if lk.to_node == node},
            nodes_by_ae={decl.ae_title: name for name, decl in topology.nodes.items()},
            link_faults=link_faults,
        )

    def move_destination(self, ae_title: str) -> Destination | None:
        """Return the outgoing link whose called AE title is ``ae_title``, as an archive's AE table does."""
        for destination in self.destinations.values():
            if destination.called_ae == ae_title:
                return destination
        return None

    def requestor_node(self, link: str | None, calling_ae: str) -> str:
        """Return the node at the start of ``link``; else the node with that AE title, else the title."""
        if link is not None and link in self.requestors:
            return self.requestors[link]

        return self.nodes_by_ae.get(calling_ae, calling_ae)


def link_speed_evidence(routes: RetrieveRoutes, link: str | None, data_direction: str,
                        object_size_bytes: int | None) -> dict[str, Any]:
    """Describe what on ``link`` slows the data: bandwidth and latency faults, with estimates.

    ``data_direction`` is the direction the objects travel on the link:
    ``upstream`` (client to server) for a C-MOVE sub-association,
    ``downstream`` for the C-STORE sub-operations of a C-GET.
    """
    faults = list(routes.link_faults(link)) if link else []
    bandwidth = [f for f in faults if f.type == "bandwidth" and f.direction == data_direction]
    latency = [f for f in faults if f.type == "latency"]
    evidence: dict[str, Any] = {"data_link": link, "data_direction": data_direction,
                                "link_faults": [f"{f.name} ({f.type}, {f.direction})"
                                                for f in bandwidth + latency]}
    if object_size_bytes is not None:
        evidence["object_size_bytes"] = object_size_bytes
    if bandwidth:
        rate_kb_s = min(int(f.attributes.get("rate", 0)) or 1 for f in bandwidth)
        evidence["rate_kb_s"] = rate_kb_s
        if object_size_bytes is not None:
            evidence["transfer_s_estimate"] = round(object_size_bytes / (rate_kb_s * 1000), 3)
    if latency:
        evidence["latency_ms"] = max(int(f.attributes.get("latency", 0)) for f in latency)
    evidence["category"] = TIMEOUT_VS_LINK_SPEED if bandwidth or latency else SLOW_PEER

    return evidence


def requestor_timeout_failure(note: Failure, hop: str | None, evidence: dict[str, Any],
                              completed: int, not_sent: int, service: str) -> Failure:
    """Turn a requestor's DIMSE timeout note into the failure of the sub-operations it stopped.

    When the data link is slowed, the requestor's timeout is too short for
    the link and the blame is on the requestor's tuning, not on the peer.
    """
    timeout_s = note.detail.get("timeout_s")
    link_speed = evidence.get("category") == TIMEOUT_VS_LINK_SPEED
    where = f"while objects crossed {hop}"
    if "rate_kb_s" in evidence:
        where += f" at {evidence['rate_kb_s']} KB/s"
    reason = (f"the requestor's DIMSE timeout ({timeout_s} s) on the C-{service.upper()} "
              f"association expired {where}; the retrieve stopped with {completed} completed "
              f"and {not_sent} not sent")
    if link_speed:
        reason += "; the timeout is too short for this link, the peer did not fail"

    return Failure(
        FailureKind.DIMSE_TIMEOUT, hop, Side.REQUESTOR if link_speed else Side.ACCEPTOR, False,
        reason,
        {**note.detail, **evidence, "control_link": note.hop, "completed": completed,
         "not_sent": not_sent},
    )


def transfer_compatible(accepted: str, wanted: str) -> bool:
    """Check whether an object in ``wanted`` can be sent on a context accepted for ``accepted``.

    pynetdicom 3.0.4 converts a dataset between uncompressed transfer
    syntaxes of the same byte order, never to or from a compressed one.
    """
    from pydicom.uid import UID

    accepted_uid, wanted_uid = UID(accepted), UID(wanted)
    if accepted_uid == wanted_uid:
        return True
    if accepted_uid.is_compressed or wanted_uid.is_compressed:
        return False

    return accepted_uid.is_little_endian == wanted_uid.is_little_endian
