"""Faults of a link: byte-level ones modelled on Toxiproxy's toxics, and DICOM-level ones.

One module per fault type, each documenting its attributes and units. The
byte-level types have Toxiproxy's attributes and units: :mod:`.latency`,
:mod:`.bandwidth`, :mod:`.slow_close`, :mod:`.timeout`, :mod:`.reset_peer`,
:mod:`.slicer`, :mod:`.limit_data` and :mod:`.down`. The DICOM-level types
are in :mod:`.dicom`. Importing this package registers all of them in
:data:`FAULT_TYPES`. A new fault type is one new module that calls
:func:`register` and is imported here or in :mod:`.dicom`.

:class:`LinkFaults` holds the active faults of one link and builds the
stages of each connection (see :mod:`simulator.links.stages`).

Exceptions: :class:`FaultError`, a
:class:`~simulator.errors.SimulatorError` and a ValueError, for a fault
that cannot be added, updated or removed.
"""

from simulator.links.faults import (
    bandwidth,
    dicom,
    down,
    latency,
    limit_data,
    reset_peer,
    slicer,
    slow_close,
    timeout,
)
from simulator.links.faults.base import (
    FAULT_TYPES,
    ActiveFault,
    FaultAttributes,
    FaultStage,
    FaultType,
    register,
)
from simulator.links.faults.link import LinkFaults
from simulator.links.faults.spec import FaultError, FaultSpec, fault_problems

__all__ = [
    "FAULT_TYPES",
    "ActiveFault",
    "FaultAttributes",
    "FaultError",
    "FaultSpec",
    "FaultStage",
    "FaultType",
    "LinkFaults",
    "bandwidth",
    "dicom",
    "down",
    "fault_problems",
    "latency",
    "limit_data",
    "register",
    "reset_peer",
    "slicer",
    "slow_close",
    "timeout",
]
