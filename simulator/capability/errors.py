"""Exceptions of the capability package, under one root::

    SimulatorError
    +-- CapabilityError      check or probe input is invalid
        +-- CheckError       check_topology cannot run with the inputs given
        +-- ProbeError       a probe cannot start or the system answers in a way it cannot use
"""

from __future__ import annotations

from simulator.errors import SimulatorError


class CapabilityError(SimulatorError):
    """Root of the errors raised by simulator.capability."""


class CheckError(CapabilityError):
    """check_topology or the drift comparison cannot run with the inputs given."""


class ProbeError(CapabilityError):
    """A probe cannot start, or the probed system answers in a way the probe cannot use."""
