"""The Toxiproxy fault backend: byte-level faults applied by a Toxiproxy server.

With ``faults: {backend: toxiproxy, url: http://HOST:8474}`` in the
topology, the runner calls :class:`ToxiproxyBackend` for each link. It
creates one Toxiproxy proxy per link, named ``rehearse.<site>.<link>``,
whose upstream is the link's receiving node, and the link's own proxy
forwards to it::

    sender -> simulator link proxy -> Toxiproxy proxy -> receiving node
              (PDU recording, firewall,   (latency, bandwidth, slicer, ...)
               DICOM faults, down)

The simulator's proxy stays in front, so the run still records every PDU,
and the firewall and the DICOM-level faults act there. The faults whose
type is a Toxiproxy toxic (latency, bandwidth, slow_close, timeout,
reset_peer, slicer, limit_data) go to Toxiproxy with the same name,
stream, toxicity and attributes. ``down`` stays in the simulator's proxy,
because it keeps the port and draws per connection, which disabling a
Toxiproxy proxy does not.

The Toxiproxy proxies listen on 127.0.0.1 when the API URL's host is a
loopback address, else on all interfaces of the Toxiproxy host, and the
link's proxy connects to that port on the URL's host.

Differences from the simulator backend: Toxiproxy draws toxicity with its
own random numbers, so the run seed does not make those draws
reproducible and no ``link.fault_applied`` or ``link.fault_skipped``
events are recorded for them. A failure that a Toxiproxy toxic causes is
not blamed on the fault by name, only on the link.

toxiproxy-python keeps its server address in class attributes; a module
lock serialises the calls, so runs with different Toxiproxy servers can
share a process. Every call runs on one worker thread and waits at most
:data:`REQUEST_TIMEOUT_S`; a fault change made during the run therefore
holds the run's event loop for one HTTP round trip.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, TypeVar

import requests
import toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from simulator.links.faults import FAULT_TYPES, FaultError, FaultSpec, LinkFaults, fault_problems
from simulator.recording.recorder import BoundRecorder, Recorder
from simulator.toxiproxy.settings import (
    ToxiproxyError,
    join_address,
    parse_toxiproxy_url,
    split_address,
)

TOXIPROXY_TYPES = frozenset(
    {"latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"}
)
"""Fault types that Toxiproxy applies under this backend; the others stay in the simulator."""

REQUEST_TIMEOUT_S = 10.0

_API_LOCK = threading.Lock()
"""Guards toxiproxy-python's class-level server address during each call."""

T = TypeVar("T")


def proxy_name(site: str, link: str) -> str:
    """Return the Toxiproxy proxy name of a link: ``rehearse.<site>.<link>``, URL-safe."""
    readable = link.replace("->", "-to-")
    return "rehearse." + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{site}.{readable}")


class ToxiproxyBackend:
    """One Toxiproxy server driving the byte-level faults of one run's links."""

    def __init__(self, url: str, site: str, recorder: Recorder) -> None:
        self.url = url
        self.host, self.port = parse_toxiproxy_url(url)
        self.site = site
        self.recorder = recorder
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toxiproxy")
        self._proxies: dict[str, str] = {}
        """Toxiproxy proxy name by link name."""

    @property
    def _loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    async def start(self) -> None:
        """Read the server's version; raise ToxiproxyError naming the URL when that fails."""
        version = await asyncio.to_thread(self.call, "read the version", _version)
        self.recorder.emit("toxiproxy.backend_started", url=self.url, version=version)

    async def add_link(self, link: str, upstream_host: str, upstream_port: int, seed: int,
                       recorder: BoundRecorder) -> tuple[LinkFaults, str, int]:
        """Create the link's Toxiproxy proxy; return its faults and the address to forward to."""
        name = proxy_name(self.site, link)
        listen = "127.0.0.1:0" if self._loopback else "0.0.0.0:0"
        upstream = join_address(upstream_host, upstream_port)
        created = await asyncio.to_thread(
            self.call, f"create proxy {name}", _create_proxy, name, upstream, listen
        )
        self._proxies[link] = name
        _, port = split_address(created.listen)
        self.recorder.emit("toxiproxy.proxy_created", link=link, proxy=name,
                           listen=created.listen, upstream=upstream)
        faults = ToxiproxyLinkFaults(link, seed, recorder, self, name)

        return faults, self.host, port

    async def stop(self) -> None:
        """Delete the run's Toxiproxy proxies; a failure is recorded, not raised."""
        for link, name in self._proxies.items():
            try:
                await asyncio.to_thread(self.call, f"delete proxy {name}", _delete_proxy, name)
            except ToxiproxyError as exc:
                self.recorder.emit("toxiproxy.proxy_left", link=link, proxy=name, error=str(exc))
        self._proxies.clear()
        self._executor.shutdown(wait=False)

    def call(self, action: str, function: Callable[..., T], *args: Any) -> T:
        """Run one toxiproxy-python call on the worker thread; raise ToxiproxyError on failure."""
        future = self._executor.submit(self._locked, function, *args)
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except FutureTimeoutError as exc:
            raise ToxiproxyError(
                f"Toxiproxy at {self.url} did not respond within {REQUEST_TIMEOUT_S:g} s "
                f"to {action}; check the server or faults.url in the topology"
            ) from exc
        except requests.RequestException as exc:
            raise ToxiproxyError(
                f"cannot reach Toxiproxy at {self.url} to {action} ({type(exc).__name__}); "
                "start Toxiproxy or correct faults.url in the topology"
            ) from exc
        except (NotFound, ProxyExists, InvalidToxic) as exc:
            raise ToxiproxyError(
                f"Toxiproxy at {self.url} rejected the request to {action}: {_response_text(exc)}"
            ) from exc

    def _locked(self, function: Callable[..., T], *args: Any) -> T:
        with _API_LOCK:
            APIConsumer.host, APIConsumer.port = self.host, self.port
            return function(*args)


def _version() -> str:
    response = APIConsumer.get("/version", timeout=REQUEST_TIMEOUT_S)
    try:
        return str(response.json().get("version", ""))
    except ValueError:
        return str(response.text).strip()


def _create_proxy(name: str, upstream: str, listen: str) -> toxiproxy.Proxy:
    server = toxiproxy.Toxiproxy()
    stale = server.get_proxy(name)
    if stale is not None:
        # Left by an earlier run of the same site that did not stop cleanly.
        stale.destroy()
    return server.create(upstream=upstream, name=name, listen=listen)


def _delete_proxy(name: str) -> None:
    proxy = toxiproxy.Toxiproxy().get_proxy(name)
    if proxy is not None:
        proxy.destroy()


def _add_toxic(name: str, spec: FaultSpec, attributes: dict[str, Any]) -> None:
    proxy = toxiproxy.Toxiproxy().get_proxy(name)
    if proxy is None:
        raise NotFound(f"proxy {name} not found")
    proxy.add_toxic(name=spec.name, type=spec.type, stream=spec.direction,
                    toxicity=spec.toxicity, attributes=attributes)


def _update_toxic(name: str, toxic: str, toxicity: float, attributes: dict[str, Any]) -> None:
    # toxiproxy-python has no update call; its APIConsumer maps the error statuses.
    APIConsumer.post(f"/proxies/{name}/toxics/{toxic}",
                     json={"toxicity": toxicity, "attributes": attributes},
                     timeout=REQUEST_TIMEOUT_S)


def _remove_toxic(name: str, toxic: str) -> None:
    proxy = toxiproxy.Toxiproxy().get_proxy(name)
    if proxy is None:
        raise NotFound(f"proxy {name} not found")
    proxy.destroy_toxic(toxic)


def _response_text(exc: Exception) -> str:
    content = exc.args[0] if exc.args else b""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    return text.strip() or type(exc).__name__


class ToxiproxyLinkFaults(LinkFaults):
    """A link's faults with the Toxiproxy types sent to its Toxiproxy proxy.

    The other types stay in the simulator's proxy through :class:`LinkFaults`.
    Names are unique across both, and :meth:`specs` lists them in the order
    they were added.
    """

    def __init__(self, link_name: str, seed: int, recorder: BoundRecorder,
                 backend: ToxiproxyBackend, toxiproxy_proxy: str) -> None:
        super().__init__(link_name, seed, recorder)
        self._backend = backend
        self._toxiproxy_proxy = toxiproxy_proxy
        self._remote: dict[str, FaultSpec] = {}
        self._order: list[str] = []
        self._events = recorder.bind(link=link_name)

    def specs(self) -> list[FaultSpec]:
        local = {spec.name: spec for spec in super().specs()}
        combined = {**local, **self._remote}
        self._order = [name for name in self._order if name in combined]

        return [combined[name] for name in self._order]

    def add(self, spec: FaultSpec) -> None:
        if any(existing.name == spec.name for existing in self.specs()):
            raise FaultError(
                f"link {self.link_name}: a fault named {spec.name!r} is already active; "
                "remove it first or choose another name"
            )
        if spec.type not in TOXIPROXY_TYPES:
            super().add(spec)
            self._order.append(spec.name)
            return

        attributes = self._checked_attributes(spec)
        self._remote_call(f"add fault {spec.name!r}", _add_toxic, spec, attributes)
        self._remote[spec.name] = spec
        self._order.append(spec.name)
        self._events.emit("link.fault_added", seed=self.seed, **self._fields(spec))

    def update(self, name: str, attributes: Mapping[str, Any] | None = None,
               toxicity: float | None = None) -> None:
        previous = self._remote.get(name)
        if previous is None:
            super().update(name, attributes=attributes, toxicity=toxicity)
            return

        values = previous.model_dump()
        values["attributes"] = {**previous.attributes, **(attributes or {})}
        if toxicity is not None:
            values["toxicity"] = toxicity
        try:
            spec = FaultSpec.model_validate(values)
        except ValueError as exc:
            raise FaultError(f"link {self.link_name}: fault {name!r}: {exc}") from exc
        full = self._checked_attributes(spec)
        self._remote_call(f"update fault {name!r}", _update_toxic, name, spec.toxicity, full)
        self._remote[name] = spec
        self._events.emit("link.fault_updated", previous_toxicity=previous.toxicity,
                          previous_attributes=previous.attributes, **self._fields(spec))

    def remove(self, name: str) -> None:
        spec = self._remote.get(name)
        if spec is None:
            super().remove(name)
            return

        self._remote_call(f"remove fault {name!r}", _remove_toxic, name)
        del self._remote[name]
        self._events.emit("link.fault_removed", **self._fields(spec))

    def _checked_attributes(self, spec: FaultSpec) -> dict[str, Any]:
        """Validate as the simulator would and return every attribute, defaults included."""
        problems = fault_problems(spec)
        if problems:
            raise FaultError(f"link {self.link_name}: " + "; ".join(problems))
        model = FAULT_TYPES[spec.type].attributes.model_validate(spec.attributes)

        return dict(model.model_dump(mode="json"))

    def _remote_call(self, action: str, function: Callable[..., None], *args: Any) -> None:
        try:
            self._backend.call(f"{action} on link {self.link_name}", function,
                               self._toxiproxy_proxy, *args)
        except ToxiproxyError as exc:
            raise FaultError(f"link {self.link_name}: {exc}") from exc

    def _fields(self, spec: FaultSpec) -> dict[str, Any]:
        return {"fault": spec.name, "fault_type": spec.type, "direction": spec.direction,
                "toxicity": spec.toxicity, "attributes": spec.attributes,
                "backend": "toxiproxy", "toxiproxy_proxy": self._toxiproxy_proxy}
