"""Pair the ledger rows of two runs: the same instance for the same destination.

Rows pair first by (SOP Instance UID, destination, service), where service
is ``store`` for routing, and for runs whose ledger does not record one.
UIDs agree across runs only when the corpus, the seed and the ``copy``
waves agree: the bundled corpus has fixed UIDs, and copies derive theirs
from the seed. Rows left over pair by the fallback key (source,
source_file, destination, service, occurrence), where occurrence numbers
the left-over rows of one source file for one destination and service in
the order of their first attempt. Two waves of the same file therefore
pair wave by wave.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from simulator.compare.reader import LedgerEntry

FALLBACK_KEY = ("source", "source_file", "destination", "service", "occurrence")


class MatchMethod(StrEnum):
    UID = "sop-instance-uid"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class RowPair:
    """One delivery in both runs, or in one of them (the other side is None)."""

    a: LedgerEntry | None
    b: LedgerEntry | None
    method: MatchMethod | None

    @property
    def any_row(self) -> LedgerEntry:
        row = self.a or self.b
        assert row is not None

        return row


@dataclass(frozen=True)
class Matching:
    pairs: list[RowPair]
    by_uid: int
    by_fallback: int
    only_a: int
    only_b: int

    @property
    def method(self) -> str:
        """The matching used, as printed: sop-instance-uid, fallback, mixed or none."""
        if self.by_uid and self.by_fallback:
            return "mixed"
        if self.by_fallback:
            return str(MatchMethod.FALLBACK)
        if self.by_uid:
            return str(MatchMethod.UID)

        return "none"

    def as_record(self) -> dict[str, object]:
        return {
            "method": self.method, "by_sop_instance_uid": self.by_uid,
            "by_fallback": self.by_fallback, "only_in_a": self.only_a, "only_in_b": self.only_b,
            "fallback_key": list(FALLBACK_KEY),
        }


def match_rows(rows_a: list[LedgerEntry], rows_b: list[LedgerEntry]) -> Matching:
    """Pair rows by UID and destination, then the rest by the fallback key."""
    by_key_b = {(r.sop_instance_uid, r.destination, r.service): r for r in rows_b}
    pairs: list[RowPair] = []
    left_a: list[LedgerEntry] = []
    for row in rows_a:
        partner = by_key_b.pop((row.sop_instance_uid, row.destination, row.service), None)
        if partner is None:
            left_a.append(row)
        else:
            pairs.append(RowPair(row, partner, MatchMethod.UID))
    by_uid = len(pairs)

    fallback_b = _by_fallback_key(list(by_key_b.values()))
    only_a = 0
    for key, row in _by_fallback_key(left_a).items():
        partner = fallback_b.pop(key, None)
        pairs.append(RowPair(row, partner, None if partner is None else MatchMethod.FALLBACK))
        only_a += partner is None
    pairs.extend(RowPair(None, row, None) for row in fallback_b.values())

    return Matching(pairs, by_uid, len(left_a) - only_a, only_a, len(fallback_b))


def _by_fallback_key(rows: list[LedgerEntry]) -> dict[tuple[str, str, str, str, int],
                                                     LedgerEntry]:
    groups: dict[tuple[str, str, str, str], list[LedgerEntry]] = defaultdict(list)
    for row in rows:
        groups[(row.source, row.source_file, row.destination, row.service)].append(row)
    keyed: dict[tuple[str, str, str, str, int], LedgerEntry] = {}
    for (source, source_file, destination, service), group in groups.items():
        # Rows never attempted have no time; they sort last, by UID so the order is stable.
        group.sort(key=lambda r: (r.first_attempt_mono is None, r.first_attempt_mono or 0.0,
                                  r.sop_instance_uid))
        for occurrence, row in enumerate(group):
            keyed[(source, source_file, destination, service, occurrence)] = row

    return keyed
