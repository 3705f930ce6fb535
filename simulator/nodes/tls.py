"""TLS for nodes that declare ``tls: true`` (DICOM over TLS, PS3.15 Annex B).

Each run makes its own throw-away certificate authority with trustme and
issues one certificate for 127.0.0.1 and localhost, which every TLS
acceptor presents and every TLS requestor trusts. trustme keeps the keys in
memory; nothing is written to the run directory.
"""

from __future__ import annotations

import ssl
import threading
from functools import cached_property

import trustme

SERVER_NAME = "localhost"


class RunTls:
    """The run's certificate authority and the SSL contexts built from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @cached_property
    def _authority(self) -> trustme.CA:
        return trustme.CA(organization_name="dicom-rehearsal run CA")

    @cached_property
    def _certificate(self) -> trustme.LeafCert:
        return self._authority.issue_cert(SERVER_NAME, "127.0.0.1")

    def server_context(self) -> ssl.SSLContext:
        with self._lock:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._certificate.configure_cert(context)
            return context

    def client_context(self) -> ssl.SSLContext:
        with self._lock:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            self._authority.configure_trust(context)
            return context
