"""The rehearsal's links seen as Toxiproxy proxies, and their faults as toxics.

A proxy named after a link is that link's :class:`~simulator.links.proxy.LinkProxy`:
``listen`` is its 127.0.0.1 port and ``upstream`` where it forwards.
``enabled: false`` is a ``down`` fault named :data:`DISABLED_FAULT`, which
the toxic list does not show. Every other fault of the link is a toxic,
byte-level and DICOM-level alike, with ``stream`` for the fault's direction.
Links cannot be deleted, nor their listen or upstream changed, because the
nodes of the run use them: those requests get 409 Conflict.

A proxy created through the API is a new LinkProxy on 127.0.0.1 that
forwards to the given upstream. It records its traffic in the run's
``events.jsonl`` like a link, under its proxy name, and stops with the API.

Errors are :class:`ApiError` with Toxiproxy's status and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simulator.links.faults import FAULT_TYPES, FaultError, FaultSpec, LinkFaults
from simulator.links.proxy import LinkProxy, LinkStartError
from simulator.links.registry import AssociationRegistry
from simulator.recording.recorder import BoundRecorder, Recorder
from simulator.toxiproxy.settings import join_address, split_address

DISABLED_FAULT = "proxy-disabled"
"""Name of the ``down`` fault that stands for ``enabled: false``."""

LOOPBACK_LISTEN_HOSTS = ("", "127.0.0.1", "localhost")


class ApiError(Exception):
    """A request that Toxiproxy would refuse; ``status`` and the message are Toxiproxy's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


PROXY_NOT_FOUND = (404, "proxy not found")
PROXY_EXISTS = (409, "proxy already exists")
TOXIC_NOT_FOUND = (404, "toxic not found")
TOXIC_EXISTS = (409, "toxic already exists")
INVALID_STREAM = (400, "stream was invalid, can be either upstream or downstream")
INVALID_TYPE = (400, "invalid toxic type")


def api_error(error: tuple[int, str], detail: str | None = None) -> ApiError:
    status, message = error
    return ApiError(status, f"{message}: {detail}" if detail else message)


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"bad request body: {detail}")


def missing_field(name: str) -> ApiError:
    return ApiError(400, f"missing required field: {name}")


def toxic_json(spec: FaultSpec) -> dict[str, Any]:
    """Return a fault as Toxiproxy shows a toxic, attributes with their defaults filled in."""
    attributes = FAULT_TYPES[spec.type].attributes.model_validate(spec.attributes)

    return {
        "attributes": attributes.model_dump(mode="json"),
        "name": spec.name,
        "type": spec.type,
        "stream": spec.direction,
        "toxicity": spec.toxicity,
    }


def listen_port(listen: str) -> int:
    """Return the port of a listen address on loopback; raise ApiError otherwise."""
    try:
        host, port = split_address(listen if ":" in listen else f"{listen}:0")
    except ValueError as exc:
        raise bad_request(f"listen {exc}") from exc
    if host not in LOOPBACK_LISTEN_HOSTS:
        raise bad_request(
            f"listen {listen!r}: this API listens on 127.0.0.1 only; give 127.0.0.1:PORT"
        )

    return port


def upstream_address(upstream: str) -> tuple[str, int]:
    try:
        host, port = split_address(upstream)
    except ValueError as exc:
        raise bad_request(f"upstream {exc}") from exc
    if not host or port == 0:
        raise bad_request(f"upstream {upstream!r}: give host:port with a port from 1 to 65535")

    return host, port


@dataclass
class ProxyInput:
    """The fields of a proxy in a request; None for a field the request left out."""

    name: str | None
    listen: str | None
    upstream: str | None
    enabled: bool | None

    @classmethod
    def from_json(cls, document: Any, where: str = "") -> ProxyInput:
        if not isinstance(document, dict):
            raise bad_request(f"expected a JSON object{where}")
        values: dict[str, Any] = {}
        for name, kind in (("name", str), ("listen", str), ("upstream", str), ("enabled", bool)):
            value = document.get(name)
            if value is not None and not isinstance(value, kind):
                raise bad_request(f"{name}{where} must be a {kind.__name__}, not {value!r}")
            values[name] = value

        return cls(**values)


class ProxyCollection:
    """The proxies of the API: the run's links, plus the proxies created through it."""

    def __init__(self, links: Mapping[str, LinkProxy], recorder: Recorder,
                 registry: AssociationRegistry, seed: int) -> None:
        self.links = links
        self.recorder = recorder
        self.registry = registry
        self.seed = seed
        self.created: dict[str, LinkProxy] = {}

    def names(self) -> list[str]:
        return [*self.links, *self.created]

    def get(self, name: str) -> LinkProxy:
        proxy = self.links.get(name) or self.created.get(name)
        if proxy is None:
            raise api_error(PROXY_NOT_FOUND)
        return proxy

    def proxy_json(self, name: str) -> dict[str, Any]:
        proxy = self.get(name)
        return {
            "name": name,
            "listen": join_address("127.0.0.1", proxy.port),
            "upstream": join_address(proxy.upstream_host, proxy.upstream_port),
            "enabled": is_enabled(proxy.faults),
            "toxics": self.toxics_json(name),
        }

    def toxics_json(self, name: str) -> list[dict[str, Any]]:
        return [toxic_json(spec) for spec in visible_specs(self.get(name).faults)]

    async def create(self, request: ProxyInput) -> str:
        """Start a new proxy on 127.0.0.1 and return its name."""
        name = _required(request.name, "name")
        upstream = _required(request.upstream, "upstream")
        if name in self.links or name in self.created:
            raise api_error(PROXY_EXISTS)
        port = listen_port(request.listen or "127.0.0.1:0")
        host, upstream_port = upstream_address(upstream)
        proxy = await self._start_proxy(name, host, upstream_port, port, None)
        self.created[name] = proxy
        if request.enabled is False:
            set_enabled(proxy.faults, False)

        return name

    async def update(self, name: str, request: ProxyInput) -> None:
        """Apply listen, upstream and enabled; a link refuses new listen and upstream."""
        proxy = self.get(name)
        listen_changed = request.listen is not None and listen_port(request.listen) not in (0, proxy.port)
        upstream = None if request.upstream is None else upstream_address(request.upstream)
        upstream_changed = upstream is not None and upstream != (proxy.upstream_host, proxy.upstream_port)
        if (listen_changed or upstream_changed) and name in self.links:
            raise ApiError(409, f"proxy {name} is a link of the running rehearsal; its listen "
                                "and upstream are fixed by the topology")
        if upstream is not None and upstream_changed:
            # New connections use the new upstream; open ones keep theirs, as in Toxiproxy.
            proxy.upstream_host, proxy.upstream_port = upstream
        if listen_changed:
            assert request.listen is not None
            await self._restart(name, listen_port(request.listen))
        if request.enabled is not None:
            set_enabled(self.get(name).faults, request.enabled)

    async def delete(self, name: str) -> None:
        self.get(name)
        if name in self.links:
            raise ApiError(409, f"proxy {name} is a link of the running rehearsal and cannot be "
                                "deleted; disable it with enabled: false instead")
        proxy = self.created.pop(name)
        await proxy.stop()
        self.recorder.emit("toxiproxy.proxy_deleted", link=name)

    async def populate(self, requests: list[ProxyInput]) -> list[str]:
        """Create or replace proxies, all checked before any is changed; return their names."""
        seen: set[str] = set()
        for index, request in enumerate(requests, start=1):
            name = _required(request.name, f"name at proxy {index}")
            _required(request.upstream, f"upstream at proxy {index}")
            if name in seen:
                raise bad_request(f"duplicate proxy name {name!r}")
            seen.add(name)
            if request.enabled is not False:
                listen_port(request.listen or "127.0.0.1:0")
                upstream_address(request.upstream or "")
            if name in self.links and self._differs(name, request):
                raise ApiError(409, f"proxy {name} is a link of the running rehearsal; its "
                                    "listen and upstream are fixed by the topology")
        for request in requests:
            assert request.name is not None
            if not self._differs(request.name, request):
                continue
            if request.name in self.created:
                await self.delete(request.name)
            await self.create(request)

        return [request.name or "" for request in requests]

    def reset(self) -> None:
        """Enable every proxy and remove every fault, as Toxiproxy's reset does."""
        for name in self.names():
            faults = self.get(name).faults
            for spec in faults.specs():
                faults.remove(spec.name)

    async def stop(self) -> None:
        for name in list(self.created):
            await self.created.pop(name).stop()

    def _differs(self, name: str, request: ProxyInput) -> bool:
        if name not in self.links and name not in self.created:
            return True
        proxy = self.get(name)
        listen = request.listen or ""
        same_listen = not listen or listen_port(listen) in (0, proxy.port)
        upstream = upstream_address(request.upstream or "")

        return not (same_listen and upstream == (proxy.upstream_host, proxy.upstream_port))

    async def _start_proxy(self, name: str, host: str, upstream_port: int, port: int,
                           faults: LinkFaults | None) -> LinkProxy:
        recorder = BoundRecorder(self.recorder, {"link": name})
        proxy = LinkProxy(
            name, host, upstream_port, recorder, self.registry, listen_port=port,
            faults=faults if faults is not None else LinkFaults(name, self.seed, recorder),
        )
        try:
            await proxy.start()
        except LinkStartError as exc:
            raise ApiError(500, str(exc)) from exc
        self.recorder.emit("toxiproxy.proxy_created", link=name, listen_port=proxy.port,
                           upstream=[host, upstream_port])

        return proxy

    async def _restart(self, name: str, port: int) -> None:
        old = self.created[name]
        await old.stop()
        self.created[name] = await self._start_proxy(
            name, old.upstream_host, old.upstream_port, port, old.faults
        )


def _required(value: str | None, name: str) -> str:
    if not value:
        raise missing_field(name)
    return value


def visible_specs(faults: LinkFaults) -> list[FaultSpec]:
    return [spec for spec in faults.specs() if not _is_disabled_marker(spec)]


def _is_disabled_marker(spec: FaultSpec) -> bool:
    return spec.name == DISABLED_FAULT and spec.type == "down"


def is_enabled(faults: LinkFaults) -> bool:
    return not any(_is_disabled_marker(spec) for spec in faults.specs())


def set_enabled(faults: LinkFaults, enabled: bool) -> None:
    """Add or remove the ``down`` fault that stands for a disabled proxy."""
    if enabled == is_enabled(faults):
        return
    if enabled:
        faults.remove(DISABLED_FAULT)
    else:
        faults.add(FaultSpec(name=DISABLED_FAULT, type="down"))


def find_toxic(faults: LinkFaults, name: str) -> FaultSpec:
    for spec in visible_specs(faults):
        if spec.name == name:
            return spec
    raise api_error(TOXIC_NOT_FOUND)


def add_toxic(faults: LinkFaults, document: Any) -> FaultSpec:
    """Add a toxic from its JSON, with Toxiproxy's defaults and checks in Toxiproxy's order."""
    if not isinstance(document, dict):
        raise bad_request("expected a JSON object")
    stream = document.get("stream") or "downstream"
    if stream not in ("upstream", "downstream"):
        raise api_error(INVALID_STREAM)
    fault_type = document.get("type")
    if not isinstance(fault_type, str) or fault_type not in FAULT_TYPES:
        raise api_error(INVALID_TYPE)
    name = document.get("name") or f"{fault_type}_{stream}"
    if not isinstance(name, str):
        raise bad_request(f"name must be a string, not {name!r}")
    if name == DISABLED_FAULT:
        raise bad_request(f"the toxic name {DISABLED_FAULT} is reserved for enabled: false")
    if any(spec.name == name for spec in faults.specs()):
        raise api_error(TOXIC_EXISTS)
    attributes = document.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise bad_request(f"attributes must be a JSON object, not {attributes!r}")
    toxicity = document.get("toxicity", 1.0)
    spec = _spec(name=name, type=fault_type, direction=stream, toxicity=toxicity,
                 attributes=attributes)
    _apply(lambda: faults.add(spec))

    return find_toxic(faults, name)


def update_toxic(faults: LinkFaults, name: str, document: Any) -> FaultSpec:
    """Merge new attributes and toxicity into an active toxic."""
    find_toxic(faults, name)
    if not isinstance(document, dict):
        raise bad_request("expected a JSON object")
    attributes = document.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise bad_request(f"attributes must be a JSON object, not {attributes!r}")
    toxicity = document.get("toxicity")
    if toxicity is not None and (isinstance(toxicity, bool) or not isinstance(toxicity, int | float)):
        raise bad_request(f"toxicity must be a number from 0 to 1, not {toxicity!r}")
    _apply(lambda: faults.update(name, attributes=attributes, toxicity=toxicity))

    return find_toxic(faults, name)


def remove_toxic(faults: LinkFaults, name: str) -> None:
    find_toxic(faults, name)
    _apply(lambda: faults.remove(name))


def _spec(**values: Any) -> FaultSpec:
    try:
        return FaultSpec.model_validate(values)
    except ValueError as exc:
        raise bad_request(str(exc).replace("\n", " ")) from exc


def _apply(change: Any) -> None:
    try:
        change()
    except FaultError as exc:
        raise bad_request(str(exc)) from exc
