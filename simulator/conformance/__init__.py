"""SOP class and transfer syntax names, and what a declaration supports."""

from simulator.conformance.names import (
    STORAGE_SOP_CLASS_UIDS,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    UnknownNameError,
    describe_uid,
    resolve_sop_class,
    resolve_transfer_syntax,
)

__all__ = [
    "STORAGE_SOP_CLASS_UIDS",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "UnknownNameError",
    "describe_uid",
    "resolve_sop_class",
    "resolve_transfer_syntax",
]
