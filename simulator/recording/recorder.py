"""The one place where run events are written.

Every event is one JSON object on one line of ``events.jsonl``, rendered by
structlog and flushed before :meth:`Recorder.emit` returns, so a run that is
killed keeps every event up to the kill. Events come from pynetdicom's
association threads and from the asyncio loop that runs the links; a lock
serialises the writes, so ``emit`` is safe to call from any thread.

Each event has a short fixed name in ``kind`` (``association.rejected``,
``link.connection_opened``) and its changing data in fields. structlog
reserves the key ``event``, so callers never pass a field of that name.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog

RUN_FORMAT_VERSION = 1
"""Version of the run directory format; see docs/run-format.md."""

EventListener = Callable[[dict[str, Any]], None]


class Recorder:
    """Writer of ``events.jsonl`` for one run, and fan-out to listeners.

    Listeners (the ledger, the progress bar, later the MQTT publisher) get
    each event as a dict after it is on disk. A listener that raises is
    counted in :attr:`listener_errors` and never stops the run.
    """

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self.listener_errors = 0
        self._lock = threading.Lock()
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._seq = itertools.count(1)
        self._listeners: list[EventListener] = []
        self._closed = False
        self._logger = structlog.wrap_logger(
            structlog.WriteLogger(self._file),
            processors=[
                structlog.processors.EventRenamer("kind"),
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
        )

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event and pass it to the listeners; return the event."""
        if "event" in fields:
            raise ValueError("'event' is reserved by structlog; name the field otherwise")
        with self._lock:
            if self._closed:
                return {}
            record: dict[str, Any] = {"seq": next(self._seq), "run_id": self.run_id}
            record.update(fields)
            # Times go into the record itself, so listeners get them too.
            record["t_mono"] = round(time.monotonic(), 6)
            record["t_wall"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
            self._logger.msg(kind, **record)
            self._file.flush()
            # Rebuild what was written, without re-reading the file.
            record["kind"] = kind
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(record)
            except Exception:  # noqa: BLE001 - a listener must never stop a run
                self.listener_errors += 1

        return record

    @contextmanager
    def bound(self, **fields: Any) -> Iterator[BoundRecorder]:
        yield BoundRecorder(self, fields)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()


class BoundRecorder:
    """A recorder view that adds fixed fields (node, link, assoc_id) to every event."""

    def __init__(self, recorder: Recorder, fields: dict[str, Any]) -> None:
        self.recorder = recorder
        self.fields = fields

    def bind(self, **fields: Any) -> BoundRecorder:
        return BoundRecorder(self.recorder, {**self.fields, **fields})

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.recorder.emit(kind, **{**self.fields, **fields})
