"""DICOM-level faults: faults that act on whole PDUs and DIMSE messages.

One module per fault type, each documenting its attributes and units:
:mod:`.associate_reject`, :mod:`.abort`, :mod:`.stall`,
:mod:`.hold_release`, :mod:`.corrupt_pdu`, :mod:`.answer_status`,
:mod:`.clamp_max_length` and :mod:`.middlebox_limit`. Importing this
package registers them in :data:`~simulator.links.faults.base.FAULT_TYPES`
beside the byte-level faults, so a scenario names all faults alike.

A connection that gets a DICOM fault gets a
:class:`~simulator.links.faults.dicom.stage.PDUStage` in both directions,
which frames the streams into PDUs. Connections without one pay nothing.
"""

from simulator.links.faults.dicom import (
    abort,
    answer_status,
    associate_reject,
    clamp_max_length,
    corrupt_pdu,
    hold_release,
    middlebox_limit,
    stall,
)
from simulator.links.faults.dicom.base import DicomFault, Flow, register_dicom
from simulator.links.faults.dicom.stage import PDUStage

DICOM_FAULT_TYPES = (
    abort.FAULT_TYPE.name,
    answer_status.FAULT_TYPE.name,
    associate_reject.FAULT_TYPE.name,
    clamp_max_length.FAULT_TYPE.name,
    corrupt_pdu.FAULT_TYPE.name,
    hold_release.FAULT_TYPE.name,
    middlebox_limit.FAULT_TYPE.name,
    stall.FAULT_TYPE.name,
)
"""Names of the DICOM-level fault types."""

__all__ = [
    "DICOM_FAULT_TYPES",
    "DicomFault",
    "Flow",
    "PDUStage",
    "abort",
    "answer_status",
    "associate_reject",
    "clamp_max_length",
    "corrupt_pdu",
    "hold_release",
    "middlebox_limit",
    "register_dicom",
    "stall",
]
