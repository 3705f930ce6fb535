"""Association ids and failure notes shared by the link proxies and the nodes.

A simulated SCU node registers its socket's local port right after it
connects and before it sends the A-ASSOCIATE-RQ. The proxy looks that port
up when the connection opens or when the first bytes arrive, or makes a new
id for a client that the simulator did not start (DCMTK storescu, for
example). It then registers the local port of its own upstream socket under
the same id, before it forwards those bytes. The receiving node can
therefore look the id up from its peer's port once the A-ASSOCIATE-RQ
arrives, but not reliably at TCP accept, when the proxy may not have
registered yet. The proxy calls :meth:`AssociationRegistry.forget` for
both ports when the connection closes.

Failure notes pass evidence that only one party has to the party that
classifies the failure: the proxy notes a refused upstream connection under
the client's port, and an acceptor notes its own timeout under the
association id, for the requestor to read.

Keys are TCP ports on the loopback interface, where every link runs.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Iterator

from simulator.recording.failures import Failure


class AssociationRegistry:
    """Thread-safe map from a local TCP port on 127.0.0.1 to an association id.

    NOTE: Linux can give two connected sockets the same local port when
    their peers differ: after connect() without bind(), and possibly after
    bind() with SO_REUSEADDR, as pynetdicom does. Such a collision maps both
    sockets to the last id registered. The link proxy binds its upstream
    sockets without SO_REUSEADDR, which keeps their ports exclusive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[int, str] = {}
        self._links: dict[str, str] = {}
        self._link_failures: dict[int, Failure] = {}
        self._peer_failures: dict[str, Failure] = {}
        self._counters: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))

    def register(self, port: int, assoc_id: str, link: str | None = None) -> None:
        """Map ``port`` to ``assoc_id``, replacing an earlier mapping of that port.

        The proxy passes ``link`` so that :meth:`link_of` can name it.
        """
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port; expected 1..65535")
        if not assoc_id:
            raise ValueError(f"association id for port {port} is empty")

        with self._lock:
            self._ids[port] = assoc_id
            if link is not None:
                self._links[assoc_id] = link

    def lookup(self, port: int) -> str | None:
        """Return the association id registered for ``port``, or None."""
        with self._lock:
            return self._ids.get(port)

    def link_of(self, assoc_id: str) -> str | None:
        """Return the name of the link that carries ``assoc_id``, while it is open."""
        with self._lock:
            return self._links.get(assoc_id)

    def new_id(self, prefix: str) -> str:
        """Return a new id ``{prefix}#{n}``, with n counting from 1 per prefix."""
        with self._lock:
            return f"{prefix}#{next(self._counters[prefix])}"

    def forget(self, port: int, assoc_id: str | None = None) -> None:
        """Remove the mapping of ``port``.

        With ``assoc_id``, remove it only while the port still maps to that
        id, so that a socket closing late cannot erase the registration of a
        newer socket that reuses the port. The link of that id is forgotten too.
        """
        with self._lock:
            if assoc_id is None or self._ids.get(port) == assoc_id:
                self._ids.pop(port, None)
            if assoc_id is not None:
                self._links.pop(assoc_id, None)

    def note_link_failure(self, port: int, failure: Failure) -> None:
        """Keep a failure that a link saw for the client connection from ``port``."""
        with self._lock:
            self._link_failures[port] = failure

    def drop_link_failure(self, port: int) -> None:
        """Drop the note of an earlier connection from ``port``; a proxy calls this on accept.

        The note is not dropped in :meth:`register` because a proxy can
        refuse a connection before its client has registered the port.
        """
        with self._lock:
            self._link_failures.pop(port, None)

    def link_failure(self, port: int | None) -> Failure | None:
        """Return the failure a link noted for the connection from ``port``, or None."""
        if port is None:
            return None
        with self._lock:
            return self._link_failures.get(port)

    def note_peer_failure(self, assoc_id: str, failure: Failure) -> None:
        """Keep a failure that the acceptor of ``assoc_id`` saw on its side."""
        with self._lock:
            self._peer_failures[assoc_id] = failure

    def peer_failure(self, assoc_id: str) -> Failure | None:
        """Return the failure the acceptor noted for ``assoc_id``, or None."""
        with self._lock:
            return self._peer_failures.get(assoc_id)

    def __len__(self) -> int:
        """Return the number of ports mapped."""
        with self._lock:
            return len(self._ids)
