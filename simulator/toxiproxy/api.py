"""The part of Toxiproxy's HTTP API that clients use, served by a running rehearsal.

``rehearse run --toxiproxy-api PORT`` starts :class:`ToxiproxyApiServer` on
127.0.0.1:PORT, on the run's event loop, so requests change the links'
faults on the same thread as the timeline does. Routes, JSON shapes and
status codes follow Toxiproxy 2.x (api.go)::

    GET    /version                          200 {"version": ...}
    GET    /proxies                          200 {name: proxy, ...}
    POST   /proxies                          201 proxy
    POST   /populate                         201 {"proxies": [proxy, ...]}
    POST   /reset                            204
    GET    /proxies/{proxy}                  200 proxy
    POST   /proxies/{proxy}  (or PATCH)      200 proxy
    DELETE /proxies/{proxy}                  204
    GET    /proxies/{proxy}/toxics           200 [toxic, ...]
    POST   /proxies/{proxy}/toxics           200 toxic
    GET    /proxies/{proxy}/toxics/{toxic}   200 toxic
    POST   /proxies/{proxy}/toxics/{toxic}   200 toxic (PATCH too)
    DELETE /proxies/{proxy}/toxics/{toxic}   204

Errors are ``{"error": message, "status": code}``: 404 proxy or toxic not
found, 409 proxy or toxic already exists, 400 bad request body, invalid
stream or invalid toxic type. As Toxiproxy does, a request whose
User-Agent starts with ``Mozilla/`` gets 403, so that a web page cannot
drive the API from a browser. See :mod:`.collection` for how proxies map to
links. ``/metrics`` is not served.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from simulator.links.proxy import LinkProxy
from simulator.links.registry import AssociationRegistry
from simulator.recording.recorder import Recorder
from simulator.toxiproxy.collection import (
    ApiError,
    ProxyCollection,
    ProxyInput,
    add_toxic,
    bad_request,
    find_toxic,
    remove_toxic,
    toxic_json,
    update_toxic,
)
from simulator.toxiproxy.http import HttpRequest, HttpResponse, HttpServer
from simulator.toxiproxy.settings import ToxiproxyError

API_HOST = "127.0.0.1"

Route = Callable[[HttpRequest, tuple[str, ...]], Awaitable[HttpResponse]]


def _simulator_version() -> str:
    try:
        return f"dicom-rehearsal {version('dicom-rehearsal')}"
    except PackageNotFoundError:
        return "dicom-rehearsal"


class ToxiproxyApi:
    """Route requests to the proxy collection; one instance per run."""

    def __init__(self, collection: ProxyCollection) -> None:
        self.collection = collection
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "version"): self._version,
            ("GET", "proxies"): self._proxy_index,
            ("POST", "proxies"): self._proxy_create,
            ("POST", "populate"): self._populate,
            ("POST", "reset"): self._reset,
            ("GET", "proxy"): self._proxy_show,
            ("POST", "proxy"): self._proxy_update,
            ("PATCH", "proxy"): self._proxy_update,
            ("DELETE", "proxy"): self._proxy_delete,
            ("GET", "toxics"): self._toxic_index,
            ("POST", "toxics"): self._toxic_create,
            ("GET", "toxic"): self._toxic_show,
            ("POST", "toxic"): self._toxic_update,
            ("PATCH", "toxic"): self._toxic_update,
            ("DELETE", "toxic"): self._toxic_delete,
        }

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return HttpResponse(403, b"User agent not allowed\n", content_type="text/plain")
        resource = _resource(request.segments)
        if resource is None:
            return _error(ApiError(404, "not found"))
        route = self._routes.get((request.method, resource))
        if route is None:
            allowed = sorted(method for method, name in self._routes if name == resource)
            return HttpResponse.json(405, {"error": "method not allowed", "status": 405},
                                     headers={"Allow": ", ".join(allowed)})
        try:
            return await route(request, request.segments)
        except ApiError as exc:
            return _error(exc)

    async def _version(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        return HttpResponse(200, json.dumps({"version": _simulator_version()}).encode() + b"\n",
                            content_type="application/json;charset=utf-8")

    async def _proxy_index(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        return HttpResponse.json(
            200, {name: self.collection.proxy_json(name) for name in self.collection.names()}
        )

    async def _proxy_create(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        name = await self.collection.create(ProxyInput.from_json(_body(request)))
        return HttpResponse.json(201, self.collection.proxy_json(name))

    async def _populate(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        document = _body(request)
        if not isinstance(document, list):
            raise bad_request("expected a JSON array of proxies")
        inputs = [ProxyInput.from_json(item, f" at proxy {i}") for i, item in enumerate(document, 1)]
        names = await self.collection.populate(inputs)
        return HttpResponse.json(
            201, {"proxies": [self.collection.proxy_json(name) for name in names]}
        )

    async def _reset(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        self.collection.reset()
        return HttpResponse(204)

    async def _proxy_show(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        return HttpResponse.json(200, self.collection.proxy_json(segments[1]))

    async def _proxy_update(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        self.collection.get(segments[1])
        await self.collection.update(segments[1], ProxyInput.from_json(_body(request)))
        return HttpResponse.json(200, self.collection.proxy_json(segments[1]))

    async def _proxy_delete(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        await self.collection.delete(segments[1])
        return HttpResponse(204)

    async def _toxic_index(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        return HttpResponse.json(200, self.collection.toxics_json(segments[1]))

    async def _toxic_create(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        proxy = self.collection.get(segments[1])
        spec = add_toxic(proxy.faults, _body(request))
        return HttpResponse.json(200, toxic_json(spec))

    async def _toxic_show(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        proxy = self.collection.get(segments[1])
        return HttpResponse.json(200, toxic_json(find_toxic(proxy.faults, segments[3])))

    async def _toxic_update(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        proxy = self.collection.get(segments[1])
        spec = update_toxic(proxy.faults, segments[3], _body(request))
        return HttpResponse.json(200, toxic_json(spec))

    async def _toxic_delete(self, request: HttpRequest, segments: tuple[str, ...]) -> HttpResponse:
        proxy = self.collection.get(segments[1])
        remove_toxic(proxy.faults, segments[3])
        return HttpResponse(204)


def _resource(segments: tuple[str, ...]) -> str | None:
    """Name the route of a path: version, proxies, populate, reset, proxy, toxics or toxic."""
    if len(segments) == 1 and segments[0] in ("version", "proxies", "populate", "reset"):
        return segments[0]
    if len(segments) < 2 or segments[0] != "proxies":
        return None
    if len(segments) == 2:
        return "proxy"
    if segments[2] == "toxics":
        return {3: "toxics", 4: "toxic"}.get(len(segments))

    return None


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(str(exc)) from exc


def _error(exc: ApiError) -> HttpResponse:
    return HttpResponse.json(exc.status, {"error": exc.message, "status": exc.status})


class ToxiproxyApiServer:
    """Serve the API for the links of one run on 127.0.0.1:``port``, on the running loop."""

    def __init__(self, port: int, links: Mapping[str, LinkProxy], recorder: Recorder,
                 registry: AssociationRegistry, seed: int) -> None:
        self.collection = ProxyCollection(links, recorder, registry, seed)
        self.recorder = recorder
        self._server = HttpServer(ToxiproxyApi(self.collection).handle, API_HOST, port)

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        """Listen; raise ToxiproxyError when the port cannot be bound."""
        requested = self._server.port
        try:
            await self._server.start()
        except OSError as exc:
            raise ToxiproxyError(
                f"--toxiproxy-api {requested}: cannot listen on {API_HOST}:{requested} "
                f"({exc.strerror or exc}); choose another port or free this one"
            ) from exc
        self.recorder.emit("toxiproxy.api_started", address=[API_HOST, self.port])

    async def stop(self) -> None:
        await self._server.stop()
        await self.collection.stop()
        self.recorder.emit("toxiproxy.api_stopped", address=[API_HOST, self.port])
