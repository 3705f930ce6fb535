"""The delivery ledger: one row per (instance, expected final destination).

Rows are created when routing decides where an instance should go, and
change state as hops succeed or fail. A row is ``delivered`` only when the
object is really on the destination's disk (or, for an external system,
acknowledged with a success status); the check happens in :meth:`Ledger.finalize`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from simulator.recording.failures import Failure, FailureKind, Side
from simulator.recording.recorder import Recorder


class RowState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    NEVER_ATTEMPTED = "never-attempted"


@dataclass
class LedgerRow:
    sop_instance_uid: str
    destination: str
    source: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    source_file: str
    service: str = "store"
    state: RowState = RowState.PENDING
    attempts: int = 0
    hops: list[str] = field(default_factory=list)
    status: str | None = None
    failure: dict[str, Any] | None = None
    delivered_path: str | None = None
    acknowledged: bool = False
    intact: bool | None = None
    integrity: dict[str, Any] | None = None
    patient: dict[str, str] | None = None
    """Patient name, ID and birth date: only with ``--include-phi``, else None."""
    first_attempt_mono: float | None = None
    finished_mono: float | None = None

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["state"] = str(self.state)

        return record


@dataclass(frozen=True)
class InstanceInfo:
    """The ledger's record of a source instance: UIDs only, never patient data."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    source: str
    source_file: str


Verifier = Callable[[LedgerRow], tuple[bool, bool | None, dict[str, Any] | None]]
"""Checks a delivered row: (found on disk, intact, integrity detail)."""


class Ledger:
    """Thread-safe ledger shared by every node of a run."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._rows: dict[tuple[str, str, str], LedgerRow] = {}
        self._lock = threading.Lock()
        self.delivered_count = 0
        self.failed_count = 0

    def expect(self, info: InstanceInfo, destination: str, service: str = "store") -> None:
        """Add a row; ``service`` is ``store`` for routing, ``move`` or ``get`` for a retrieve."""
        key = (info.sop_instance_uid, destination, service)
        with self._lock:
            if key in self._rows:
                return
            self._rows[key] = LedgerRow(
                sop_instance_uid=info.sop_instance_uid, destination=destination,
                source=info.source, sop_class_uid=info.sop_class_uid,
                transfer_syntax_uid=info.transfer_syntax_uid,
                study_instance_uid=info.study_instance_uid,
                series_instance_uid=info.series_instance_uid, source_file=info.source_file,
                service=service,
            )

    def attempt(self, sop_instance_uid: str, destination: str, hop: str,
                service: str = "store") -> None:
        with self._lock:
            row = self._rows.get((sop_instance_uid, destination, service))
            if row is None:
                return
            row.attempts += 1
            if hop not in row.hops:
                row.hops.append(hop)
            if row.first_attempt_mono is None:
                row.first_attempt_mono = time.monotonic()

    def delivered(self, sop_instance_uid: str, destination: str, hop: str, status: int,
                  path: str | None = None, warning: Failure | None = None,
                  service: str = "store") -> None:
        """Mark a row delivered; a warning status is kept in ``failure`` with the state delivered."""
        with self._lock:
            row = self._rows.get((sop_instance_uid, destination, service))
            if row is None:
                return
            if row.state != RowState.DELIVERED:
                self.delivered_count += 1
            if row.state == RowState.FAILED:
                self.failed_count -= 1
            row.state = RowState.DELIVERED
            row.status = f"0x{status:04X}"
            row.acknowledged = True
            row.delivered_path = path
            row.failure = None if warning is None else warning.as_record()
            if hop not in row.hops:
                row.hops.append(hop)
            row.finished_mono = time.monotonic()

    def failed(self, sop_instance_uid: str, destination: str, failure: Failure,
               status: int | None = None, service: str = "store") -> None:
        with self._lock:
            row = self._rows.get((sop_instance_uid, destination, service))
            if row is None or row.state == RowState.DELIVERED:
                return
            if row.state != RowState.FAILED:
                self.failed_count += 1
            row.state = RowState.FAILED
            row.failure = failure.as_record()
            row.status = None if status is None else f"0x{status:04X}"
            if failure.hop and failure.hop not in row.hops:
                row.hops.append(failure.hop)
            row.finished_mono = time.monotonic()

    def rows_for(self, sop_instance_uid: str) -> list[LedgerRow]:
        with self._lock:
            return [r for (uid, _, _), r in self._rows.items() if uid == sop_instance_uid]

    def pending(self) -> int:
        with self._lock:
            return sum(1 for r in self._rows.values() if r.state == RowState.PENDING)

    def __iter__(self) -> Iterator[LedgerRow]:
        with self._lock:
            return iter(list(self._rows.values()))

    def finalize(self, verify: Verifier) -> None:
        """Verify delivered rows on disk and close every row that is still pending."""
        for row in self:
            if row.state == RowState.PENDING:
                row.state = RowState.NEVER_ATTEMPTED if row.attempts == 0 else RowState.FAILED
                if row.state == RowState.FAILED and row.failure is None:
                    row.failure = Failure(
                        FailureKind.NEVER_ATTEMPTED, None, Side.RUN, False,
                        "the run ended before this delivery reached a final state",
                    ).as_record()
                continue
            if row.state != RowState.DELIVERED:
                continue
            found, intact, detail = verify(row)
            row.intact = intact
            row.integrity = detail
            if not found:
                row.state = RowState.FAILED
                row.failure = Failure(
                    FailureKind.FALSE_SUCCESS, row.hops[-1] if row.hops else None, Side.ACCEPTOR,
                    True, f"{row.destination} answered {row.status} but the object is not "
                    "in its storage",
                ).as_record()
            elif intact is False:
                row.failure = Failure(
                    FailureKind.INTEGRITY, row.hops[-1] if row.hops else None, Side.ROUTER,
                    True, "the stored object differs from the one sent in ways no declared "
                    "coercion explains", detail or {},
                ).as_record()

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as stream:
            for row in sorted(self, key=lambda r: (r.source, r.sop_instance_uid, r.destination,
                                                   r.service)):
                stream.write(json.dumps(row.as_record(), default=str) + "\n")
