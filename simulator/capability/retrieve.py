"""The timeout budget of a scenario's C-MOVE and C-GET steps.

A C-MOVE or C-GET requestor waits up to its DIMSE timeout for each pending
response, and pynetdicom's SCP sends one only after a sub-operation's
C-STORE is complete. So the largest object the archive may send, at the
bandwidth of the link the sub-operations cross, must fit in the
retrieving node's DIMSE timeout. C-MOVE sub-operations cross the link from
the archive to the move destination; C-GET ones come back on the
retrieving node's own association, downstream on its link to the archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulator.corpus import CorpusInstance
from simulator.scenario.model import Scenario
from simulator.topology.model import Topology

BYTES_PER_KB = 1000
"""The bandwidth fault's KB, as in Toxiproxy."""


@dataclass(frozen=True)
class RetrievePrediction:
    """What a retrieve step's largest sub-operation needs against the requestor's timeout."""

    step: int
    service: str
    viewer: str
    archive: str
    link: str
    largest_bytes: int
    rate_kb_per_s: float | None
    transfer_s: float | None
    dimse_timeout_s: float | None

    @property
    def dimse_timeout_predicted(self) -> bool:
        return (self.transfer_s is not None and self.dimse_timeout_s is not None
                and self.transfer_s > self.dimse_timeout_s)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "dimse_timeout_predicted": self.dimse_timeout_predicted}

    def __str__(self) -> str:
        if self.transfer_s is None:
            return (f"retrieve step {self.step} ({self.service} by {self.viewer}): link "
                    f"{self.link} has no bandwidth limit, so no timeout is predicted")
        verdict = ("exceeds" if self.dimse_timeout_predicted else "fits in")
        return (f"retrieve step {self.step} ({self.service} by {self.viewer} from "
                f"{self.archive}): the largest object ({self.largest_bytes} bytes) takes about "
                f"{self.transfer_s:.1f} s over {self.link} at {self.rate_kb_per_s:g} KB/s, which "
                f"{verdict} {self.viewer}'s DIMSE timeout of {self.dimse_timeout_s} s"
                + (": a dimse-timeout is predicted (timeout tuning against link speed)"
                   if self.dimse_timeout_predicted else ""))


def predict_retrieves(topology: Topology, scenario: Scenario,
                      instances: Sequence[CorpusInstance]) -> list[RetrievePrediction]:
    """Return one prediction per C-MOVE or C-GET step of the scenario."""
    largest = max((i.size_bytes for i in instances), default=0)
    predictions = []
    for index, step in enumerate(scenario.timeline):
        if step.action != "retrieve" or step.service not in ("move", "get"):
            continue
        viewer = topology.nodes[str(step.viewer)]
        archive = str(step.from_node)
        if step.service == "get":
            link_from, link_to, direction = viewer.name, archive, "downstream"
        else:
            destination_ae = step.move_destination or viewer.ae_title
            target = next((n.name for n in topology.nodes.values()
                           if n.ae_title == destination_ae), viewer.name)
            link_from, link_to, direction = archive, target, "upstream"
        link = next((lk for lk in topology.links
                     if lk.from_node == link_from and lk.to_node == link_to), None)
        if link is None:
            continue
        rate = _bandwidth(link.faults, scenario, link.link_name, direction)
        transfer_s = None if rate is None else largest / (rate * BYTES_PER_KB)
        predictions.append(RetrievePrediction(
            step=index, service=str(step.service), viewer=viewer.name, archive=archive,
            link=link.link_name, largest_bytes=largest, rate_kb_per_s=rate,
            transfer_s=transfer_s, dimse_timeout_s=viewer.timeouts.dimse_s,
        ))

    return predictions


def _bandwidth(faults: Sequence[Any], scenario: Scenario, link: str,
               direction: str) -> float | None:
    """Return the lowest bandwidth limit on the link in that direction, from the topology or any step."""
    specs = list(faults)
    for step in scenario.timeline:
        if step.action == "add_fault" and step.link == link and step.fault is not None:
            specs.append(step.fault)
    rates = []
    for spec in specs:
        fields = spec if isinstance(spec, dict) else spec.model_dump()
        spec_direction = fields.get("direction") or fields.get("stream") or "downstream"
        if fields.get("type") == "bandwidth" and spec_direction == direction:
            rates.append(float(fields.get("attributes", {}).get("rate", 0)) or None)

    limits = [r for r in rates if r]
    return min(limits) if limits else None
