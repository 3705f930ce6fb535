"""The Storage SCP every receiving node runs: PACS, viewer and router ingress."""

from __future__ import annotations

import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pynetdicom import AE, evt
from pynetdicom.association import Association

from simulator.errors import RunError
from simulator.nodes.association import AssociationTrace, idle_timer_expired
from simulator.nodes.runtime import NodeServices, add_scp_contexts, configure_ae
from simulator.recording.failures import Failure, FailureKind, Side, status_category
from simulator.topology.model import NodeBase

STATUS_SUCCESS = 0x0000
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_WARNING_DOES_NOT_MATCH_SOP_CLASS = 0xB007


def _unknown_character_set_terms(dataset: Dataset) -> list[str]:
    """Return the Specific Character Set values that are not PS3.3 C.12.1.1.2 defined terms."""
    value = dataset.get("SpecificCharacterSet")
    if value is None:
        return []
    terms = [value] if isinstance(value, str) else list(value)

    return [str(t) for t in terms if str(t) not in python_encoding]


@dataclass(frozen=True)
class Received:
    """One instance an SCP has written to disk, with who sent it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    assoc_id: str
    link: str | None


StoredCallback = Callable[[Received], None]


class StorageSCP:
    """A pynetdicom Storage SCP built from a declaration, storing to ``store_dir``."""

    def __init__(self, declaration: NodeBase, services: NodeServices, store_dir: Path,
                 on_stored: StoredCallback | None = None,
                 required_keywords: tuple[str, ...] = ()) -> None:
        self.declaration = declaration
        self.services = services
        self.store_dir = store_dir
        self.on_stored = on_stored
        self.required_keywords = required_keywords
        self.port: int | None = None
        self._server: Any = None
        self._traces: weakref.WeakKeyDictionary[Association, AssociationTrace] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def start(self, port: int) -> int:
        """Listen on 127.0.0.1 (or the declared host) and return the bound port."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.declaration.ae_title)
        configure_ae(ae, self.declaration)
        add_scp_contexts(ae, self.declaration)
        handlers: list[Any] = [(event_type, self._dispatch(name))
                               for event_type, name in _TRACE_EVENTS]
        handlers.append((evt.EVT_C_STORE, self._on_c_store))
        handlers.append((evt.EVT_C_ECHO, lambda _event: STATUS_SUCCESS))
        ssl_context = self.services.tls.server_context() if self.declaration.tls else None
        try:
            self._server = ae.start_server(
                (self.declaration.host, port), block=False, evt_handlers=handlers,
                ssl_context=ssl_context,
            )
        except OSError as exc:
            raise RunError(
                f"node {self.declaration.name} cannot listen on {self.declaration.host}:{port} "
                f"({exc.strerror or exc}); choose another port in the topology or free this one"
            ) from exc
        self.port = self._server.server_address[1]

        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def trace(self, assoc: Association) -> AssociationTrace:
        with self._lock:
            trace = self._traces.get(assoc)
            if trace is None:
                trace = AssociationTrace(
                    assoc_id=self.services.next_assoc_id(self.declaration.name),
                    node=self.declaration.name, link=None, role="acceptor",
                    recorder=self.services.recorder, registry=self.services.registry,
                )
                self._traces[assoc] = trace
            return trace

    def _dispatch(self, method: str) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            getattr(self.trace(event.assoc), method)(event)
            if method == "_on_aborted":
                self._check_network_timeout(event)

        return handler

    def _check_network_timeout(self, event: Any) -> None:
        trace = self.trace(event.assoc)
        network_s = self.declaration.timeouts.network_s
        # pynetdicom restarts its idle timer when the A-ABORT goes out, so the
        # timer alone cannot tell; the time since the last PDU received can. The
        # A-ABORT itself may be sent before this runs, so PDUs sent do not count.
        idle = idle_timer_expired(event) or (
            network_s is not None
            and time.monotonic() - trace.last_received_mono >= network_s * 0.95
        )
        if trace.abort_received is not None or not idle:
            return
        trace.emit("timeout", timeout_kind="network", timed_out_side="acceptor",
                   timeout_s=network_s, node=self.declaration.name)
        failure = Failure(
            FailureKind.NETWORK_TIMEOUT, trace.link, Side.REQUESTOR, False,
            f"{self.declaration.name} aborted the association after {network_s} s "
            "without a PDU (its network timeout)",
            {"timeout_s": network_s, "timed_out_side": "acceptor", "node": self.declaration.name},
        )
        self.services.registry.note_peer_failure(trace.assoc_id, failure)

    def _on_c_store(self, event: Any) -> Dataset | int:
        trace = self.trace(event.assoc)
        request = event.request
        sop_instance_uid = str(request.AffectedSOPInstanceUID)
        temp_path = Path(event.dataset_path)
        size = temp_path.stat().st_size
        if getattr(self.declaration, "check_encapsulation", False):
            finding = encapsulation_finding(temp_path)
            if finding is not None:
                return self._abort_on_finding(event, trace, str(request.AffectedSOPInstanceUID),
                                              finding)
        status, detail = self._validate(temp_path)
        fields: dict[str, Any] = {
            "command": "C-STORE-RQ", "sop_class": str(request.AffectedSOPClassUID),
            "sop_instance_uid": sop_instance_uid, "transfer_syntax": event.context.transfer_syntax,
            "size_bytes": size, "calling_ae": event.assoc.requestor.ae_title,
        }
        trace.emit("dimse.received", **fields)
        if status_category(status) in ("success", "warning"):
            final = self.store_dir / f"{sop_instance_uid}.dcm"
            shutil.move(str(temp_path), final)
            trace.emit("instance.stored", sop_instance_uid=sop_instance_uid, path=str(final),
                       size_bytes=size)
            if self.on_stored is not None:
                self.on_stored(Received(
                    path=final, sop_class_uid=fields["sop_class"],
                    sop_instance_uid=sop_instance_uid,
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    calling_ae=event.assoc.requestor.ae_title,
                    called_ae=event.assoc.acceptor.ae_title,
                    assoc_id=trace.assoc_id, link=trace.link,
                ))
        response = Dataset()
        response.Status = status
        if "error_comment" in detail:
            response.ErrorComment = detail["error_comment"]
        if "offending_element" in detail:
            response.OffendingElement = detail["offending_element_tags"]
        trace.emit("dimse.sent", command="C-STORE-RSP", sop_instance_uid=sop_instance_uid,
                   status=f"0x{status:04X}", status_category=status_category(status),
                   **{k: v for k, v in detail.items() if k != "offending_element_tags"})

        return response

    def _abort_on_finding(self, event: Any, trace: AssociationTrace, sop_instance_uid: str,
                          finding: dict[str, Any]) -> int:
        """Abort the association on a malformed data set, as a strict decoder does."""
        trace.emit("dimse.dataset_finding", sop_instance_uid=sop_instance_uid, **finding)
        failure = Failure(
            FailureKind.ASSOCIATION_ABORTED, trace.link, Side.REQUESTOR, True,
            f"{self.declaration.name} aborted during the data phase: {finding['finding']} "
            f"in the encapsulated pixel data of {sop_instance_uid}",
            {"dataset_finding": finding, "aborted_by": self.declaration.name},
        )
        self.services.registry.note_peer_failure(trace.assoc_id, failure)
        event.assoc.abort()

        return STATUS_CANNOT_UNDERSTAND

    def _validate(self, path: Path) -> tuple[int, dict[str, Any]]:
        """Check what this node's declaration validates, as a validating archive does."""
        charset_check = getattr(self.declaration, "character_set_check", "off")
        if not self.required_keywords and charset_check == "off":
            return STATUS_SUCCESS, {}
        try:
            dataset = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any decode error is the peer's data
            return STATUS_CANNOT_UNDERSTAND, {"error_comment": f"cannot decode: {exc}"[:64]}
        unknown = _unknown_character_set_terms(dataset) if charset_check != "off" else []
        if unknown and charset_check == "reject":
            return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, _offending(
                f"Unknown Specific Character Set {unknown[0]!r}", [0x00080005])
        missing = [kw for kw in self.required_keywords
                   if kw not in dataset or dataset[kw].is_empty]
        if missing:
            tags = [t for t in (tag_for_keyword(kw) for kw in missing) if t]
            return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, _offending(
                f"Missing {', '.join(missing)}", tags)
        if unknown:
            return STATUS_WARNING_DOES_NOT_MATCH_SOP_CLASS, _offending(
                f"Unknown Specific Character Set {unknown[0]!r}", [0x00080005])

        return STATUS_SUCCESS, {}


def _offending(comment: str, tags: list[int]) -> dict[str, Any]:
    # Error Comment is LO: 64 characters at most.
    return {
        "error_comment": comment[:64],
        "offending_element": [f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in tags],
        "offending_element_tags": tags,
    }


_TRACE_EVENTS = [
    (evt.EVT_CONN_OPEN, "_on_conn_open"),
    (evt.EVT_CONN_CLOSE, "_on_conn_close"),
    (evt.EVT_PDU_RECV, "_on_pdu_recv"),
    (evt.EVT_PDU_SENT, "_on_pdu_sent"),
    (evt.EVT_ACSE_RECV, "_on_acse_recv"),
    (evt.EVT_ACCEPTED, "_on_accepted"),
    (evt.EVT_REJECTED, "_on_rejected"),
    (evt.EVT_ABORTED, "_on_aborted"),
    (evt.EVT_RELEASED, "_on_released"),
]


UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = b"\xfe\xff\x00\xe0"


def encapsulation_finding(path: Path) -> dict[str, Any] | None:
    """Return the first item of encapsulated Pixel Data with an odd length, or None.

    PS3.5 section A.4 requires every item of encapsulated pixel data to have
    an even length; decoders such as pynetdicom's and pydicom's reject a
    data set that breaks this.
    """
    dataset = dcmread(path, defer_size=1024)
    raw = dataset._dict.get(BaseTag(0x7FE00010))
    offset = getattr(raw, "value_tell", None)
    if offset is None or getattr(raw, "length", None) != UNDEFINED_LENGTH:
        return None
    with path.open("rb") as stream:
        stream.seek(offset)
        index = 0
        while True:
            header = stream.read(8)
            if len(header) < 8 or header[:4] != ITEM_TAG:
                return None
            length = int.from_bytes(header[4:], "little")
            if length % 2:
                return {"finding": "odd-fragment-length", "item": index, "length": length}
            stream.seek(length, 1)
            index += 1
