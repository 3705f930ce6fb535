"""Exceptions raised by the simulator.

One root, :class:`SimulatorError`; callers catch by meaning::

    SimulatorError
    +-- ConfigError          a topology or scenario file is invalid (file, line, field)
    +-- CorpusError          the corpus is missing, unreadable or empty
    +-- RunError             a rehearsal could not start or finish (port in use, ...)
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every error the simulator raises on purpose."""


class ConfigError(SimulatorError):
    """A topology or scenario file is invalid.

    ``problems`` holds one line per problem, each naming the file, line and
    field and what is allowed, so every problem in a file is reported at once.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        msg = f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(msg)


class CorpusError(SimulatorError):
    """The corpus is missing, unreadable or contains no usable instance."""


class RunError(SimulatorError):
    """A rehearsal could not start or could not finish."""
