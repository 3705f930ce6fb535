"""Errors of the run comparison.

    SimulatorError (simulator.errors)
    +-- InvalidRunError    a path is not a run directory this version can read
"""

from __future__ import annotations

from pathlib import Path

from simulator.errors import SimulatorError


class InvalidRunError(SimulatorError):
    """A path that is missing, not a run directory, or in an unknown run format.

    ``path`` is the file or folder at fault and ``problem`` describes what is
    wrong with it and what to do.
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
