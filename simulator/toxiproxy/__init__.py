"""Toxiproxy interoperability: a Toxiproxy-compatible API and a Toxiproxy fault backend.

Modules:

- :mod:`.api` serves the part of Toxiproxy's HTTP API that clients use, on
  127.0.0.1, mapping proxies to the run's links and toxics to their faults
  (``rehearse run --toxiproxy-api PORT``); :mod:`.collection` contains that
  mapping and :mod:`.http` the small HTTP/1.1 server under it.
- :mod:`.backend` creates one proxy per link on a real Toxiproxy server and
  drives the byte-level faults there (``faults: {backend: toxiproxy, url: ...}``
  in the topology).
- :mod:`.settings` parses the API URL; the topology model uses it, so this
  package imports only the settings eagerly.

Exceptions::

    SimulatorError
    +-- ToxiproxyError         the backend or the API server failed
        +-- ToxiproxyUrlError  an invalid Toxiproxy URL (also a ValueError)
"""

from simulator.toxiproxy.settings import (
    DEFAULT_API_PORT,
    ToxiproxyError,
    ToxiproxyUrlError,
    parse_toxiproxy_url,
)

__all__ = ["DEFAULT_API_PORT", "ToxiproxyError", "ToxiproxyUrlError", "parse_toxiproxy_url"]
