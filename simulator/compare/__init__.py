"""Compare two rehearsal runs: what got better, what got worse, and which change did it.

``load_run`` reads a run directory of any known format version;
``compare_runs`` returns a :class:`RunDiff`; ``print_diff`` and
``diff_markdown`` print it, and ``RunDiff.as_record`` is the JSON form.
"""

from simulator.compare.diff import RunDiff, compare_runs
from simulator.compare.errors import InvalidRunError
from simulator.compare.matching import FALLBACK_KEY, Matching, MatchMethod, RowPair, match_rows
from simulator.compare.matrix import Cell, CellChange, CellDiff, build_matrix
from simulator.compare.reader import (
    CURRENT_FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    LedgerEntry,
    RunData,
    load_run,
)
from simulator.compare.render import diff_markdown, print_diff
from simulator.compare.timing import DEFAULT_THRESHOLD_PCT

__all__ = [
    "CURRENT_FORMAT_VERSION",
    "DEFAULT_THRESHOLD_PCT",
    "FALLBACK_KEY",
    "SUPPORTED_FORMAT_VERSIONS",
    "Cell",
    "CellChange",
    "CellDiff",
    "InvalidRunError",
    "LedgerEntry",
    "MatchMethod",
    "Matching",
    "RowPair",
    "RunData",
    "RunDiff",
    "build_matrix",
    "compare_runs",
    "diff_markdown",
    "load_run",
    "match_rows",
    "print_diff",
]
