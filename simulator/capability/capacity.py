"""Association limits: how many associations each receiver has open at once, per wave.

A wave is a set of senders that may send at the same time: a scenario's
``start_sending`` steps start a new wave only when they wait for ``idle``.
In a wave, a receiver counts

- from each modality sender that sends to it directly, its concurrency
  (at most one association per group); a sender that does not release
  keeps every association open until the receiver's network timeout, so
  it counts the groups it opens within that timeout;
- from each router that forwards to it, one association (a router's
  forwarder sends to one destination on one association at a time).

pynetdicom 3.0.4 rejects with A-ASSOCIATE-RJ 2/3/2 (local-limit-exceeded)
when more than ``max_associations`` acceptor associations are active,
counting the one being negotiated. The rejection is certain only for a
single sender that holds its associations open one after another: its
groups from number ``max_associations`` on are rejected. Otherwise which
association is rejected depends on timing, so all of them are at risk.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from simulator.capability import verdicts as v
from simulator.capability.routes import HopPlan
from simulator.capability.senders import SenderPlan, SentItem
from simulator.topology.model import NodeBase, RouterNode

ASSOCIATION_ESTIMATE_S = 0.1
"""Estimated time to open an association and send a small group on loopback, for held-open senders."""


@dataclass
class _Load:
    """Associations one receiver has open at once in one wave, by who opens them."""

    modalities: dict[str, int] = field(default_factory=dict)
    held_open: dict[str, bool] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)
    routers: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.modalities.values()) + len(self.routers)


@dataclass
class CapacityModel:
    """Loads per (wave, receiver), filled from the routes, then asked per hop."""

    loads: dict[tuple[int, str], _Load] = field(default_factory=lambda: defaultdict(_Load))

    def add_sender(self, sender: SenderPlan, receiver: NodeBase) -> None:
        load = self.loads[(sender.wave, receiver.name)]
        load.modalities[sender.name] = held_associations(sender, receiver)
        load.held_open[sender.name] = not sender.release
        load.concurrency[sender.name] = sender.concurrency

    def add_router(self, wave: int, router: str, receiver: str) -> None:
        self.loads[(wave, receiver)].routers.add(router)

    def verdict(self, wave: int, plan: HopPlan, item: SentItem) -> v.Verdict | None:
        load = self.loads.get((wave, plan.receiver.name))
        if load is None:
            return None
        limit = plan.receiver.max_associations
        link = plan.link.link_name
        total = load.total
        if total <= limit:
            return None
        opened_by = plan.sender.name if isinstance(plan.sender, RouterNode) else item.sender
        why = (f"{plan.receiver.name} accepts {limit} associations at once; "
               f"{_describe(load)} can open {total}")
        failure = v.rejected(link, 2, 3, 2, why)
        if _certain_overflow(load, opened_by):
            certain = item.group >= limit
            return v.Verdict(failure, certain=True) if certain else None

        return v.Verdict(failure, certain=False)


def held_associations(sender: SenderPlan, receiver: NodeBase) -> int:
    """Return how many associations ``sender`` has open at once at ``receiver``, at most."""
    groups = len(sender.groups)
    if sender.release:
        return min(sender.concurrency, groups)
    network_s = receiver.timeouts.network_s
    if network_s is None:
        return groups
    # NOTE: an estimate; a receiver aborts a held association after its network timeout.
    per_window = sender.concurrency * max(1, math.floor(network_s / ASSOCIATION_ESTIMATE_S))

    return min(groups, per_window)


def _certain_overflow(load: _Load, opened_by: str) -> bool:
    return (
        not load.routers
        and list(load.modalities) == [opened_by]
        and load.held_open.get(opened_by, False)
        and load.concurrency.get(opened_by) == 1
    )


def _describe(load: _Load) -> str:
    parts = [f"{name} ({count})" for name, count in load.modalities.items()]
    parts += [f"{router} (1)" for router in sorted(load.routers)]

    return ", ".join(parts)
