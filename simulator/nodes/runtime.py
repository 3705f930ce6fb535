"""What every running node shares: its declaration applied to a pynetdicom AE,
and the run services it reports to."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, _config

from simulator.links.registry import AssociationRegistry
from simulator.nodes.tls import RunTls
from simulator.recording.ledger import InstanceInfo, Ledger
from simulator.recording.recorder import BoundRecorder
from simulator.topology.model import NodeBase, Role

# Received datasets go straight to a file instead of memory, and files are
# sent from disk in PDU-sized pieces, so object size does not set memory use.
_config.STORE_RECV_CHUNKED_DATASET = True
_config.STORE_SEND_CHUNKED_DATASET = True
# Identifiers in C-FIND/C-MOVE requests can hold patient data.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


def configure_ae(ae: AE, declaration: NodeBase) -> None:
    """Apply a node's declared limits and AE title checks to a pynetdicom AE."""
    timeouts = declaration.timeouts
    ae.acse_timeout = timeouts.acse_s
    ae.dimse_timeout = timeouts.dimse_s
    ae.network_timeout = timeouts.network_s
    ae.connection_timeout = timeouts.connection_s
    ae.maximum_pdu_size = declaration.max_pdu
    # NOTE: pynetdicom 3.0.4 counts acceptor associations that are still negotiating,
    # so more than max_associations simultaneous requests can all be rejected (2/3/2)
    # where a real archive would accept the first max_associations of them.
    ae.maximum_associations = declaration.max_associations
    ae.require_called_aet = declaration.check_called_ae
    ae.require_calling_aet = list(declaration.accept_calling_ae or [])


def add_scp_contexts(ae: AE, declaration: NodeBase) -> None:
    """Support exactly the (SOP class, transfer syntax) pairs declared with the SCP role."""
    for entry in declaration.sop_classes:
        if Role.SCP not in entry.roles:
            continue
        ae.add_supported_context(
            entry.sop_class, list(entry.transfer_syntaxes or declaration.transfer_syntaxes)
        )


ExpandDestinations = Callable[[str, Path, str, str], list[str]]
"""(node, file, calling AE, called AE) -> final destinations an instance sent to node reaches."""


@dataclass
class NodeServices:
    """Run-wide services a node reports to."""

    recorder: BoundRecorder
    registry: AssociationRegistry
    work_dir: Path
    ledger: Ledger
    instances: dict[str, InstanceInfo]
    expand_destinations: ExpandDestinations
    tls: RunTls
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_assoc_id(self, node: str) -> str:
        with self._lock:
            return f"{node}#{next(self._counter):05d}"


def instance_info(services: NodeServices, sop_instance_uid: str, path: Path,
                  source: str) -> InstanceInfo:
    """Return the run's record of an instance, reading the header of one it has not seen."""
    known = services.instances.get(sop_instance_uid)
    if known is not None:
        return known
    from pydicom import dcmread

    header = dcmread(path, stop_before_pixels=True)
    info = InstanceInfo(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=str(header.get("SOPClassUID", "")),
        transfer_syntax_uid=str(header.file_meta.get("TransferSyntaxUID", "")),
        study_instance_uid=str(header.get("StudyInstanceUID", "")),
        series_instance_uid=str(header.get("SeriesInstanceUID", "")),
        source=source,
        source_file=path.name,
    )
    services.instances[sop_instance_uid] = info

    return info
