"""Addresses for Toxiproxy: the API URL of a Toxiproxy server, and ``host:port`` pairs.

Toxiproxy's API is plain HTTP (toxiproxy-python builds ``http://`` URLs
from a host and a port), so the URL is ``http://HOST[:PORT]``, port 8474 by
default, without a path.
"""

from __future__ import annotations

import urllib.parse

from simulator.errors import SimulatorError

DEFAULT_API_PORT = 8474


class ToxiproxyError(SimulatorError):
    """Root of the errors of the Toxiproxy backend and API."""


class ToxiproxyUrlError(ToxiproxyError, ValueError):
    """A Toxiproxy API URL is invalid; the message names the problem and the fix."""


def parse_toxiproxy_url(url: str) -> tuple[str, int]:
    """Return the host and port of a Toxiproxy API URL; raise ToxiproxyUrlError if invalid."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme != "http":
        raise ToxiproxyUrlError(
            f"Toxiproxy URL {url!r}: the scheme must be http://, as in http://127.0.0.1:8474"
        )
    if parts.username is not None or parts.password is not None:
        raise ToxiproxyUrlError(
            f"Toxiproxy URL {url!r}: Toxiproxy's API takes no credentials; remove them"
        )
    if not parts.hostname:
        raise ToxiproxyUrlError(f"Toxiproxy URL {url!r} has no host; give http://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ToxiproxyUrlError(
            f"Toxiproxy URL {url!r}: remove the path, query or fragment; give http://HOST[:PORT]"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ToxiproxyUrlError(f"Toxiproxy URL {url!r}: the port is invalid ({exc})") from exc

    return parts.hostname, port or DEFAULT_API_PORT


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into host and port; raise ValueError if invalid."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{address!r}: port {port} is not between 0 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]

    return host, port


def join_address(host: str, port: int) -> str:
    """Return ``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
