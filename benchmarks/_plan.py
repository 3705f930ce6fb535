"""The plan a sender or receiver worker is given: files and the pairs they use.

Kept apart from ``_corpora`` so that workers import neither the simulator
nor anything beyond the standard library for it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Plan:
    """Files to send and the (SOP class UID, transfer syntax UID) pairs they use."""

    root: Path
    files: tuple[Path, ...]
    pairs: tuple[tuple[str, str], ...]
    total_bytes: int

    def write(self, path: Path) -> Path:
        document = {
            "root": str(self.root),
            "files": [str(f) for f in self.files],
            "pairs": [list(p) for p in self.pairs],
            "total_bytes": self.total_bytes,
        }
        path.write_text(json.dumps(document), encoding="utf-8")

        return path

    def transfer_syntaxes_by_sop_class(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for sop_class, transfer_syntax in self.pairs:
            grouped[sop_class].append(transfer_syntax)

        return dict(grouped)


def load_plan(path: Path) -> Plan:
    document = json.loads(path.read_text(encoding="utf-8"))

    return Plan(
        Path(document["root"]),
        tuple(Path(f) for f in document["files"]),
        tuple((p[0], p[1]) for p in document["pairs"]),
        int(document["total_bytes"]),
    )
