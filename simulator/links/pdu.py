"""Incremental framing of DICOM Upper Layer PDUs (PS3.8 section 9.3).

A :class:`PDUReader` watches one direction of one TCP connection. It is fed
the bytes as the proxy forwards them and returns what it could frame:

* one :class:`PDU` per complete PDU, with the parsed fields of the ACSE
  PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP, A-ABORT);
* one :class:`DimseCommand` per DIMSE command set, decoded as soon as its
  last fragment ends;
* one :class:`PDUError` when the stream is not DICOM or not framed as
  PS3.8 specifies.

P-DATA-TF bodies are skipped while counting, so memory use does not grow
with the size of the objects sent. Only command fragments are kept, because
a command set is small and must be decoded whole.

A reader made with ``on_header`` also calls it with a :class:`PDUHeader`
as soon as the 6-byte header of a PDU has arrived, before its body: the
PDU-level recording uses that to time PDUs and to flag oversize ones early.

The PDU dataclasses and the item parsers are in :mod:`simulator.links.pdu_items`,
the code tables in :mod:`simulator.links.pdu_names`; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from simulator.links.pdu_items import (
    PDU,
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    DimseCommand,
    MalformedItemError,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseRP,
    ReleaseRQ,
    RoleSelection,
    UserIdentity,
    UserInformation,
    as_fields,
    decode_command_set,
    parse_acse,
)
from simulator.links.pdu_names import (
    ABORT_REASONS,
    ABORT_SOURCES,
    ASSOCIATE_FIXED_LENGTH,
    ASSOCIATE_RJ_REASONS,
    ASSOCIATE_RJ_RESULTS,
    ASSOCIATE_RJ_SOURCES,
    COMMAND_FIELDS,
    FIXED_LENGTH_TYPES,
    HEADER_LENGTH,
    MAX_ASSOCIATE_LENGTH,
    MAX_COMMAND_LENGTH,
    NO_DATA_SET,
    PRESENTATION_CONTEXT_RESULTS,
    USER_IDENTITY_TYPES,
    PDUType,
)

__all__ = [
    "ABORT_REASONS",
    "ABORT_SOURCES",
    "ASSOCIATE_FIXED_LENGTH",
    "ASSOCIATE_RJ_REASONS",
    "ASSOCIATE_RJ_RESULTS",
    "ASSOCIATE_RJ_SOURCES",
    "COMMAND_FIELDS",
    "HEADER_LENGTH",
    "MAX_ASSOCIATE_LENGTH",
    "MAX_COMMAND_LENGTH",
    "NO_DATA_SET",
    "PDU",
    "PDV",
    "PRESENTATION_CONTEXT_RESULTS",
    "USER_IDENTITY_TYPES",
    "Abort",
    "AssociateAC",
    "AssociateRJ",
    "AssociateRQ",
    "DimseCommand",
    "PDUError",
    "PDUErrorKind",
    "PDUHeader",
    "PDUReader",
    "PDUType",
    "PDataTF",
    "PresentationContextAC",
    "PresentationContextRQ",
    "ReaderResult",
    "ReleaseRP",
    "ReleaseRQ",
    "RoleSelection",
    "UserIdentity",
    "UserInformation",
]


PDUErrorKind = Literal[
    "tls-handshake",
    "tls-alert",
    "unknown-pdu-type",
    "invalid-length",
    "malformed-item",
    "malformed-command",
]


@dataclass(frozen=True, slots=True)
class PDUError:
    """Input that the reader cannot frame or decode.

    After a ``fatal`` error the reader has lost the PDU boundaries and
    returns nothing more. ``malformed-command`` is not fatal because the
    framing around the bad command set is intact. ``first_bytes`` is a hex
    dump of up to 16 bytes from the start of the offending PDU, or of the
    command set for ``malformed-command``.
    """

    kind: PDUErrorKind
    detail: str
    stream_offset: int
    first_bytes: str
    claimed_length: int
    pdu_type: int
    fatal: bool = True

    def to_fields(self) -> dict[str, Any]:
        """Return the error fields for an event, with ``kind`` renamed to ``error``.

        The recorder takes the event name as its ``kind`` argument, so no field may use that name.
        """
        fields = as_fields(self)
        fields["error"] = fields.pop("kind")

        return fields


ReaderResult = PDU | DimseCommand | PDUError


@dataclass(frozen=True, slots=True)
class PDUHeader:
    """Header of a PDU whose type and length passed the reader's checks.

    The body may not have arrived yet.
    """

    pdu_type: PDUType
    length: int
    stream_offset: int


class PDUReader:
    """Incremental PDU framer for one direction of one connection.

    Not thread-safe: feed it from one task only. The reader never raises
    for bad input. It returns a :class:`PDUError` and, when the error is
    fatal, stops parsing while the caller keeps forwarding bytes.
    """

    def __init__(self, on_header: Callable[[PDUHeader], None] | None = None) -> None:
        self.stopped = False
        self._on_header = on_header
        self._stream_offset = 0
        self._header = bytearray()
        self._in_pdu = False
        self._pdu_header = b""
        self._pdu_offset = 0
        self._remaining = 0
        self._body = bytearray()
        self._pdvs: list[PDV] = []
        self._pdv: PDV | None = None
        self._pdv_remaining = 0
        # Command fragments per presentation context; None once over MAX_COMMAND_LENGTH.
        self._commands: dict[int, bytearray | None] = {}

    @property
    def _pdu_type(self) -> PDUType:
        return PDUType(self._pdu_header[0])

    @property
    def _pdu_length(self) -> int:
        return int.from_bytes(self._pdu_header[2:6], "big")

    def feed(self, data: bytes) -> list[ReaderResult]:
        """Consume ``data`` and return the PDUs, commands and errors it completed."""
        results: list[ReaderResult] = []
        view = memoryview(data)
        position = 0
        while position < len(view) and not self.stopped:
            if not self._in_pdu:
                position = self._read_header(view, position, results)
            elif self._pdu_header[0] != PDUType.P_DATA_TF:
                position = self._read_body(view, position, results)
            elif self._pdv is None:
                position = self._read_pdv_header(view, position, results)
            else:
                position = self._read_pdv_value(view, position, results)
        self._stream_offset += len(data)

        return results

    def _fill_header(self, view: memoryview, position: int) -> int:
        """Copy bytes into the 6-byte header buffer; PDU and PDV item headers share it."""
        end = position + HEADER_LENGTH - len(self._header)
        self._header += view[position:end]

        return min(end, len(view))

    def _read_header(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        position = self._fill_header(view, position)
        if len(self._header) < HEADER_LENGTH:
            return position

        self._pdu_header = bytes(self._header)
        self._header.clear()
        self._pdu_offset = self._stream_offset + position - HEADER_LENGTH
        error = _check_header(self._pdu_header, self._pdu_length)
        if error is not None:
            self._stop(results, *error, following=bytes(view[position : position + 10]))
            return position

        self._in_pdu = True
        self._remaining = self._pdu_length
        self._pdvs = []
        if self._on_header is not None:
            self._on_header(PDUHeader(self._pdu_type, self._pdu_length, self._pdu_offset))

        return position

    def _read_body(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        take = min(self._remaining, len(view) - position)
        self._body += view[position : position + take]
        self._remaining -= take
        if self._remaining > 0:
            return position + take

        self._in_pdu = False
        body = bytes(self._body)
        self._body.clear()
        try:
            results.append(parse_acse(self._pdu_type, self._pdu_length, self._pdu_offset, body))
        except MalformedItemError as exc:
            self._stop(results, "malformed-item", str(exc), following=body[:10])

        return position + take

    def _read_pdv_header(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        if not self._header and self._remaining < HEADER_LENGTH:
            detail = f"P-DATA-TF ends with {self._remaining} bytes, too few for a PDV item header"
            self._stop(results, "malformed-item", detail)
            return position

        position = self._fill_header(view, position)
        if len(self._header) < HEADER_LENGTH:
            return position

        item = bytes(self._header)
        self._header.clear()
        self._remaining -= HEADER_LENGTH
        item_length = int.from_bytes(item[0:4], "big")
        if item_length < 2 or item_length - 2 > self._remaining:
            detail = (
                f"PDV item length {item_length} does not fit the "
                f"{self._remaining + 2} bytes left in the P-DATA-TF"
            )
            self._stop(results, "malformed-item", detail)
            return position

        # Message control header: bit 0 set for a command, bit 1 set for the last fragment.
        pdv = PDV(item[4], bool(item[5] & 0x01), bool(item[5] & 0x02), item_length - 2)
        self._pdvs.append(pdv)
        self._pdv = pdv
        self._pdv_remaining = pdv.value_length
        if pdv.is_command:
            self._commands.setdefault(pdv.context_id, bytearray())
        if pdv.value_length == 0:
            self._finish_pdv(results)

        return position

    def _read_pdv_value(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        assert self._pdv is not None
        take = min(self._pdv_remaining, len(view) - position)
        if self._pdv.is_command:
            fragments = self._commands[self._pdv.context_id]
            if fragments is not None and len(fragments) + take <= MAX_COMMAND_LENGTH:
                fragments += view[position : position + take]
            else:
                self._commands[self._pdv.context_id] = None
        self._pdv_remaining -= take
        self._remaining -= take
        if self._pdv_remaining == 0:
            self._finish_pdv(results)

        return position + take

    def _finish_pdv(self, results: list[ReaderResult]) -> None:
        assert self._pdv is not None
        pdv = self._pdv
        self._pdv = None
        if pdv.is_command and pdv.is_last:
            results.append(self._decode_command(pdv.context_id))
        if self._remaining == 0:
            self._in_pdu = False
            pdu = PDataTF(
                pdu_type=PDUType.P_DATA_TF,
                length=self._pdu_length,
                stream_offset=self._pdu_offset,
                pdvs=tuple(self._pdvs),
            )
            results.append(pdu)

    def _decode_command(self, context_id: int) -> DimseCommand | PDUError:
        fragments = self._commands.pop(context_id)
        if fragments is None:
            detail = f"command set on context {context_id} exceeds {MAX_COMMAND_LENGTH} bytes"
            return self._error("malformed-command", detail, fatal=False)

        try:
            return decode_command_set(bytes(fragments), context_id, self._pdu_offset)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad input
            detail = f"command set on context {context_id} cannot be decoded: {exc}"
            return self._error("malformed-command", detail, bytes(fragments[:16]), fatal=False)

    def _error(
        self, kind: PDUErrorKind, detail: str, first_bytes: bytes | None = None, fatal: bool = True
    ) -> PDUError:
        first_bytes = self._pdu_header if first_bytes is None else first_bytes
        return PDUError(
            kind,
            detail,
            self._pdu_offset,
            first_bytes[:16].hex(" "),
            self._pdu_length,
            self._pdu_header[0],
            fatal,
        )

    def _stop(
        self, results: list[ReaderResult], kind: PDUErrorKind, detail: str, following: bytes = b""
    ) -> None:
        self.stopped = True
        self._body.clear()
        self._commands.clear()
        results.append(self._error(kind, detail, self._pdu_header + following))


def _check_header(header: bytes, length: int) -> tuple[PDUErrorKind, str] | None:
    """Return the error kind and detail for an impossible PDU header, else None."""
    # A TLS record header is content type, version 3.x and a 16-bit length.
    if header[1] == 0x03 and header[2] <= 0x04 and header[0] in (0x15, 0x16):
        kind: PDUErrorKind = "tls-handshake" if header[0] == 0x16 else "tls-alert"
        detail = (
            "a TLS record arrived where a DICOM PDU was expected: the peer uses TLS "
            "on a port that carries plain DICOM; configure both ends alike"
        )
        return kind, detail

    if header[0] not in PDUType._value2member_map_:
        return "unknown-pdu-type", f"PDU type 0x{header[0]:02x} is not defined by PS3.8"

    pdu_type = PDUType(header[0])
    if pdu_type in FIXED_LENGTH_TYPES and length != 4:
        return "invalid-length", f"{pdu_type.name} must have length 4, not {length}"

    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC) and not (
        ASSOCIATE_FIXED_LENGTH <= length <= MAX_ASSOCIATE_LENGTH
    ):
        detail = (
            f"{pdu_type.name} length {length} is outside "
            f"{ASSOCIATE_FIXED_LENGTH}..{MAX_ASSOCIATE_LENGTH}"
        )
        return "invalid-length", detail

    if pdu_type is PDUType.P_DATA_TF and length < HEADER_LENGTH:
        return "invalid-length", f"P_DATA_TF length {length} cannot hold a PDV item"

    return None
