"""``rehearse watch``: a live table of the links and failures of runs, read from the broker.

:class:`WatchState` folds the messages of ``rehearsal/<run id>/...`` topics
into per-run counts, and :func:`watch` subscribes, updates a rich Live
table, and returns once the watched runs have finished.

Without a run id, the watch shows every run whose status it receives as
``running``, and ends when all of them have finished. A retained
``finished`` status of an older run is not shown and does not end the
watch. With a run id, the watch ends as soon as that run's status is
``finished``, even when the retained status says so at once.

The counts come from the events received while watching: a watcher that
starts in the middle of a run misses the earlier events, except the totals
in the run's status message.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulator.live.settings import TOPIC_ROOT, MqttSettings

REFRESH_PER_S = 4


@dataclass
class LinkCounts:
    connections: int = 0
    stored: int = 0
    failure_events: int = 0
    faults: set[str] = field(default_factory=set)


@dataclass
class FailureCount:
    count: int = 0
    last_reason: str = ""
    event_kinds: set[str] = field(default_factory=set)


@dataclass
class RunView:
    """The status and counts of one run, from the messages received so far."""

    run_id: str
    status: dict[str, Any] = field(default_factory=dict)
    seen_running: bool = False
    events: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    links: dict[str, LinkCounts] = field(default_factory=dict)
    failures: dict[tuple[str, str], FailureCount] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return str(self.status.get("state", "unknown"))

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def link(self, name: str) -> LinkCounts:
        return self.links.setdefault(name, LinkCounts())

    def apply_event(self, event: dict[str, Any]) -> None:
        """Count one event into the link and failure tables."""
        self.events += 1
        kind = str(event.get("kind", ""))
        self.kinds[kind] += 1
        link = event.get("link")
        if isinstance(link, str):
            self._count_link_event(self.link(link), kind, event)
        failure_kind = event.get("failure_kind")
        if failure_kind is not None:
            hop = str(event.get("hop") or link or "-")
            entry = self.failures.setdefault((str(failure_kind), hop), FailureCount())
            entry.count += 1
            entry.last_reason = str(event.get("reason") or "")
            entry.event_kinds.add(kind)
            if hop != "-":
                # A hop is the name of the link that a failure is blamed on.
                self.link(hop).failure_events += 1

    @staticmethod
    def _count_link_event(counts: LinkCounts, kind: str, event: dict[str, Any]) -> None:
        if kind == "link.connection_opened":
            counts.connections += 1
        elif kind == "instance.stored":
            counts.stored += 1
        elif kind == "link.fault_added":
            counts.faults.add(str(event.get("fault")))
        elif kind == "link.fault_removed":
            counts.faults.discard(str(event.get("fault")))


class WatchState:
    """The runs seen so far; ``run_id`` limits the watch to one run."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self.runs: dict[str, RunView] = {}
        self.connection_note = ""

    @property
    def topic_filter(self) -> str:
        return f"{TOPIC_ROOT}/{self.run_id}/#" if self.run_id else f"{TOPIC_ROOT}/+/#"

    def apply(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Fold one message into the state; ignore messages that are not JSON objects."""
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != TOPIC_ROOT:
            return
        run_id = levels[1]
        if self.run_id is not None and run_id != self.run_id:
            return
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(body, dict):
            return

        if len(levels) == 3 and levels[2] == "status":
            self._apply_status(run_id, body, retained)
        elif len(levels) == 4:
            self._view(run_id).apply_event(body)

    def _apply_status(self, run_id: str, status: dict[str, Any], retained: bool) -> None:
        if self.run_id is None and retained and status.get("state") == "finished" \
                and run_id not in self.runs:
            return
        view = self._view(run_id)
        view.status = status
        if status.get("state") == "running":
            view.seen_running = True

    def _view(self, run_id: str) -> RunView:
        return self.runs.setdefault(run_id, RunView(run_id))

    @property
    def done(self) -> bool:
        """True once the watched run, or every run seen running, has finished."""
        if self.run_id is not None:
            view = self.runs.get(self.run_id)
            return view is not None and view.finished
        running = [v for v in self.runs.values() if v.seen_running]
        return bool(running) and all(v.finished for v in running)

    @property
    def expectations_held(self) -> bool:
        return all(v.status.get("expectations_held", True) is not False
                   for v in self.runs.values() if v.finished)

    def render(self) -> RenderableType:
        parts: list[RenderableType] = []
        if not self.runs:
            waiting = f"Waiting for runs on {self.topic_filter}"
            parts.append(Text(waiting + (f" ({self.connection_note})" if self.connection_note else "")))
        for view in self.runs.values():
            parts += _render_run(view)
        if self.runs and self.connection_note:
            parts.append(Text(self.connection_note, style="yellow"))

        return Group(*parts)


def _render_run(view: RunView) -> list[RenderableType]:
    status = view.status
    progress = " ".join(
        f"{name} {status[name]}" for name in ("total", "sent", "delivered", "failed")
        if name in status
    )
    outcome = f", outcome {status['outcome']}" if "outcome" in status else ""
    held = status.get("expectations_held")
    verdict = ""
    if held is True:
        verdict = ", expectations held"
    elif held is False:
        verdict = ", expectations FAILED"
    header = Text(f"Run {view.run_id}: {view.state}{outcome}{verdict}. {progress}".rstrip(),
                  style="bold")

    links = Table(title="Links", title_justify="left")
    for column in ("link", "connections", "stored", "failure events", "active faults"):
        links.add_column(column, justify="left" if column in ("link", "active faults") else "right")
    for name, counts in sorted(view.links.items()):
        links.add_row(name, str(counts.connections), str(counts.stored),
                      str(counts.failure_events), ", ".join(sorted(counts.faults)) or "-")

    failures = Table(title="Failures", title_justify="left")
    for column in ("failure kind", "hop", "events", "last reason"):
        failures.add_column(column, justify="right" if column == "events" else "left")
    ranked = sorted(view.failures.items(), key=lambda item: -item[1].count)
    for (kind, hop), entry in ranked:
        failures.add_row(kind, hop, str(entry.count), entry.last_reason)

    return [header, links, failures if view.failures else Text("No failures so far.")]


SubscribedCallback = Callable[[str], None]


async def watch(settings: MqttSettings, run_id: str | None, console: Console,
                on_subscribed: SubscribedCallback | None = None) -> WatchState:
    """Show the live table until the watched runs finish; reconnect when the broker goes away.

    ``on_subscribed`` gets the topic filter after each successful subscription.
    """
    state = WatchState(run_id)
    delay_s = settings.reconnect_initial_s
    with Live(state.render(), console=console, refresh_per_second=REFRESH_PER_S) as live:
        while not state.done:
            try:
                await _follow(settings, state, live, on_subscribed)
                delay_s = settings.reconnect_initial_s
            except aiomqtt.MqttError as exc:
                state.connection_note = (
                    f"broker {settings.broker}: {exc}; retrying in {delay_s:g} s"
                )
                live.update(state.render())
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, settings.reconnect_max_s)
        live.update(state.render())
    if not console.is_terminal:
        # Live leaves the cursor at the end of its last line on a non-terminal console.
        console.line()

    return state


async def _follow(settings: MqttSettings, state: WatchState, live: Live,
                  on_subscribed: SubscribedCallback | None) -> None:
    tls_params = None
    if settings.tls:
        ca_certs = str(settings.ca_file) if settings.ca_file is not None else None
        tls_params = aiomqtt.TLSParameters(ca_certs=ca_certs)
    async with aiomqtt.Client(
        settings.host, settings.port, username=settings.username, password=settings.password,
        timeout=settings.connect_timeout_s, tls_params=tls_params,
    ) as client:
        await client.subscribe(state.topic_filter, qos=1)
        if on_subscribed is not None:
            on_subscribed(state.topic_filter)
        state.connection_note = ""
        live.update(state.render())
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
            state.apply(str(message.topic), data, retained=message.retain)
            live.update(state.render())
            if state.done:
                return
