"""Association ids shared across the link proxies and the simulated nodes.

A simulated SCU node registers its socket's local port right after it
connects and before it sends the A-ASSOCIATE-RQ. The proxy looks that port
up when the first bytes arrive, or makes a new id for a client that the
simulator did not start (DCMTK storescu, for example). It then registers
the local port of its own upstream socket under the same id, before it
forwards those bytes. The receiving node can therefore look the id up from
its peer's port once the A-ASSOCIATE-RQ arrives, but not reliably at TCP
accept, when the proxy may not have registered yet.

Keys are TCP ports on the loopback interface, where every link runs.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Iterator


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
        self._counters: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))

    def register(self, port: int, assoc_id: str) -> None:
        """Map ``port`` to ``assoc_id``, replacing an earlier mapping of that port."""
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port; expected 1..65535")
        if not assoc_id:
            raise ValueError(f"association id for port {port} is empty")

        with self._lock:
            self._ids[port] = assoc_id

    def lookup(self, port: int) -> str | None:
        """Return the association id registered for ``port``, or None."""
        with self._lock:
            return self._ids.get(port)

    def new_id(self, prefix: str) -> str:
        """Return a new id ``{prefix}#{n}``, with n counting from 1 per prefix."""
        with self._lock:
            return f"{prefix}#{next(self._counters[prefix])}"

    def forget(self, port: int, assoc_id: str | None = None) -> None:
        """Remove the mapping of ``port``.

        With ``assoc_id``, remove it only while the port still maps to that
        id, so that a socket closing late cannot erase the registration of a
        newer socket that reuses the port.
        """
        with self._lock:
            if assoc_id is None or self._ids.get(port) == assoc_id:
                self._ids.pop(port, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)
