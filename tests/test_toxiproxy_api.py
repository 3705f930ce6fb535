"""The Toxiproxy-compatible API of a running rehearsal, and the Toxiproxy fault backend.

A rehearsal with no sender and a hold step serves the API while the test
drives it: with toxiproxy-python, the client the backend uses, and with
raw HTTP for the error statuses. The Toxiproxy server itself cannot be
installed on the test machines, so the backend is tested against this API:
a second rehearsal with ``faults: {backend: toxiproxy}`` creates its proxies
on the first one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import toxiproxy
from peers import free_port
from pynetdicom import AE

from simulator.corpus import bundled_corpus
from simulator.errors import ConfigError
from simulator.links.faults import FaultSpec
from simulator.recording.recorder import BoundRecorder, Recorder
from simulator.runner import Rehearsal, RunOptions, RunResult
from simulator.scenario import load_scenario
from simulator.topology import load_topology
from simulator.toxiproxy import ToxiproxyError
from simulator.toxiproxy.backend import ToxiproxyBackend, ToxiproxyLinkFaults, proxy_name

WAIT_LIMIT_S = 60.0
"""Guard against a hung run or API; no test checks how long anything takes."""

VERIFICATION = "1.2.840.10008.1.1"
LINK = "scu->pacs"
RELEASE_LINK = "scu->release"


@pytest.fixture(scope="module", autouse=True)
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the bundled corpus once for this module, in a cache folder of its own."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        yield bundled_corpus()


def api_topology() -> dict[str, Any]:
    """A modality that never sends, with links to a PACS and to a node that ends the hold."""
    storage = {"kind": "pacs", "sop_classes": ["CTImageStorage", "Verification"]}
    return {
        "site": "api-site",
        "nodes": {
            "scu": {"kind": "modality", "ae_title": "SCU", "send_to": "pacs",
                    "sop_classes": ["CTImageStorage"]},
            "pacs": {**storage, "ae_title": "PACS"},
            "release": {**storage, "ae_title": "RELEASE"},
        },
        "links": [{"from": "scu", "to": "pacs"}, {"from": "scu", "to": "release"}],
    }


HELD_SCENARIO = {
    "name": "held-for-api", "corpus": "bundled", "timeout_s": 120, "senders": [],
    "timeline": [{"action": "hold", "after": {"association_on": RELEASE_LINK}}],
}


@dataclass
class HeldRun:
    """A rehearsal running in a thread until :meth:`release` opens a connection on its release link."""

    rehearsal: Rehearsal
    api_port: int
    thread: threading.Thread | None = None
    results: list[RunResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self) -> HeldRun:
        def target() -> None:
            try:
                self.results.append(asyncio.run(self.rehearsal.run()))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, name="held rehearsal", daemon=True)
        self.thread.start()
        wait_for_api(self.api_port, self.errors)
        return self

    def link_port(self, link: str) -> int:
        return self.rehearsal.site.proxies[link].port

    def release(self) -> RunResult:
        with socket.create_connection(("127.0.0.1", self.link_port(RELEASE_LINK)), timeout=10):
            pass
        assert self.thread is not None
        self.thread.join(WAIT_LIMIT_S)
        assert not self.thread.is_alive(), "the held run did not end after the release connection"
        if self.errors:
            raise self.errors[0]
        return self.results[0]

    def events(self) -> list[dict[str, Any]]:
        path = self.rehearsal.run_dir / "events.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for_api(port: int, errors: list[BaseException]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while time.monotonic() < deadline:
        if errors:
            raise errors[0]
        try:
            status, _ = request(port, "GET", "/version")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the Toxiproxy API on port {port} did not answer")


def prepare(folder: Path, topology: dict[str, Any], scenario: dict[str, Any],
            api_port: int | None = None) -> Rehearsal:
    """Write the inputs as YAML (JSON is valid YAML) and load them into a rehearsal."""
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology-input.yaml"
    scenario_path = folder / "scenario-input.yaml"
    topology_path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    loaded = load_topology(topology_path)
    options = RunOptions(topology_path, scenario_path, folder / "run", toxiproxy_api_port=api_port)

    return Rehearsal(loaded, load_scenario(scenario_path, loaded), options)


@contextmanager
def held_run(folder: Path) -> Iterator[HeldRun]:
    """Run the API site until the test leaves the block, then release the hold."""
    port = free_port()
    held = HeldRun(prepare(folder, api_topology(), HELD_SCENARIO, api_port=port), port).start()
    try:
        yield held
    finally:
        if held.thread is not None and held.thread.is_alive():
            held.release()


def request(port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    """Send one HTTP request to the API; return the status and the decoded JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = raw
        if payload is None and body is not None:
            payload = json.dumps(body).encode()
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data.decode("utf-8", "replace")


def client(port: int) -> toxiproxy.Toxiproxy:
    server = toxiproxy.Toxiproxy()
    server.update_api_consumer("127.0.0.1", port)
    return server


def echo_through(port: int, called_ae: str) -> int:
    """Send one C-ECHO to 127.0.0.1:``port`` and return its status."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "the association through the proxy was not established"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


# The API with toxiproxy-python.


def test_client_lists_links_as_proxies(tmp_path: Path) -> None:
    """toxiproxy-python lists each link with its listen port, upstream and enabled flag."""
    with held_run(tmp_path) as held:
        proxies = client(held.api_port).proxies()
        link = held.rehearsal.site.proxies[LINK]

        assert set(proxies) == {LINK, RELEASE_LINK}
        assert proxies[LINK].listen == f"127.0.0.1:{link.port}"
        assert proxies[LINK].upstream == f"{link.upstream_host}:{link.upstream_port}"
        assert proxies[LINK].enabled is True
        assert json.loads(client(held.api_port).version())["version"].startswith("dicom-rehearsal")


def test_client_toxics_become_link_faults(tmp_path: Path) -> None:
    """A toxic added, listed and destroyed with toxiproxy-python is a fault of the link."""
    with held_run(tmp_path) as held:
        proxy = client(held.api_port).get_proxy(LINK)
        proxy.add_toxic(name="slow", type="latency", stream="upstream", toxicity=0.5,
                        attributes={"latency": 120})
        toxics = proxy.toxics()
        faults = held.rehearsal.site.proxies[LINK].faults.specs()

        assert list(toxics) == ["slow"]
        assert toxics["slow"].attributes == {"latency": 120, "jitter": 0}
        assert toxics["slow"].stream == "upstream"
        assert toxics["slow"].toxicity == 0.5
        assert faults == [FaultSpec(name="slow", type="latency", direction="upstream",
                                    toxicity=0.5, attributes={"latency": 120})]

        proxy.destroy_toxic("slow")

        assert proxy.toxics() == {}
        assert held.rehearsal.site.proxies[LINK].faults.specs() == []
    added = [e for e in held.events() if e["kind"] == "link.fault_added" and e["link"] == LINK]
    removed = [e for e in held.events() if e["kind"] == "link.fault_removed" and e["link"] == LINK]
    assert [e["attributes"] for e in added] == [{"latency": 120}]
    assert [e["fault"] for e in removed] == ["slow"]


def test_client_disable_takes_link_down(tmp_path: Path) -> None:
    """Disabling a proxy adds a down fault: the link closes new connections until enabled."""
    with held_run(tmp_path) as held:
        proxy = client(held.api_port).get_proxy(LINK)
        port = held.link_port(LINK)
        with proxy.down():
            shown = client(held.api_port).get_proxy(LINK)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                closed_at_once = conn.recv(1) == b""

            assert shown.enabled is False
            assert shown.toxics() == {}
            assert closed_at_once
            assert [s.type for s in held.rehearsal.site.proxies[LINK].faults.specs()] == ["down"]

        assert client(held.api_port).get_proxy(LINK).enabled is True
        assert echo_through(port, "PACS") == 0x0000


def test_client_creates_and_destroys_proxy(tmp_path: Path) -> None:
    """A proxy created through the API relays DICOM to its upstream and is recorded."""
    with held_run(tmp_path) as held:
        server = client(held.api_port)
        pacs_port = held.rehearsal.site.ports["pacs"][1]
        created = server.create(upstream=f"127.0.0.1:{pacs_port}", name="extra")
        listen_port = int(created.listen.rpartition(":")[2])
        status = echo_through(listen_port, "PACS")
        listed = set(server.proxies())
        destroyed = server.destroy(server.get_proxy("extra"))

        assert status == 0x0000
        assert listed == {LINK, RELEASE_LINK, "extra"}
        assert destroyed is True
        assert set(server.proxies()) == {LINK, RELEASE_LINK}
    kinds = [e["kind"] for e in held.events() if e.get("link") == "extra"]
    assert "toxiproxy.proxy_created" in kinds
    assert "link.connection_opened" in kinds
    assert "toxiproxy.proxy_deleted" in kinds


def test_client_reset_removes_every_toxic(tmp_path: Path) -> None:
    """Reset enables every proxy and removes every toxic, as Toxiproxy's reset does."""
    with held_run(tmp_path) as held:
        server = client(held.api_port)
        server.get_proxy(LINK).add_toxic(type="bandwidth", attributes={"rate": 100})
        server.get_proxy(RELEASE_LINK).disable()

        assert server.reset() is True
        assert {name: p.enabled for name, p in server.proxies().items()} == {
            LINK: True, RELEASE_LINK: True}
        assert server.get_proxy(LINK).toxics() == {}


# The API's statuses and JSON shapes, over raw HTTP.

TOXICS = f"/proxies/{LINK}/toxics"


def test_http_not_found_statuses(tmp_path: Path) -> None:
    """Unknown proxies, toxics and paths get 404 with Toxiproxy's error body."""
    with held_run(tmp_path) as held:
        port = held.api_port

        assert request(port, "GET", "/proxies/nope") == (
            404, {"error": "proxy not found", "status": 404})
        assert request(port, "GET", "/proxies/nope/toxics") == (
            404, {"error": "proxy not found", "status": 404})
        assert request(port, "GET", f"{TOXICS}/nope") == (
            404, {"error": "toxic not found", "status": 404})
        assert request(port, "DELETE", f"{TOXICS}/nope") == (
            404, {"error": "toxic not found", "status": 404})
        assert request(port, "GET", "/nothing-here")[0] == 404


def test_http_conflict_statuses(tmp_path: Path) -> None:
    """An existing toxic or proxy name gets 409, and so does deleting a link."""
    with held_run(tmp_path) as held:
        port = held.api_port
        toxic = {"name": "cut", "type": "limit_data", "attributes": {"bytes": 5000}}
        created = request(port, "POST", TOXICS, toxic)
        again = request(port, "POST", TOXICS, toxic)
        proxy_again = request(port, "POST", "/proxies",
                              {"name": LINK, "upstream": "127.0.0.1:1"})
        delete_link = request(port, "DELETE", f"/proxies/{LINK}")

        assert created == (200, {"name": "cut", "type": "limit_data", "stream": "downstream",
                                 "toxicity": 1.0, "attributes": {"bytes": 5000}})
        assert again == (409, {"error": "toxic already exists", "status": 409})
        assert proxy_again == (409, {"error": "proxy already exists", "status": 409})
        assert delete_link[0] == 409
        assert "cannot be deleted" in delete_link[1]["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "bad request body"),
        (json.dumps({"type": "latency", "stream": "sideways"}).encode(),
         "stream was invalid, can be either upstream or downstream"),
        (json.dumps({"type": "warp_drive"}).encode(), "invalid toxic type"),
        (json.dumps({"type": "latency", "attributes": {"latency": -5}}).encode(),
         "bad request body"),
        (json.dumps({"type": "latency", "attributes": {"speed": 5}}).encode(),
         "bad request body"),
        (json.dumps({"type": "latency", "toxicity": 1.5}).encode(), "bad request body"),
        (json.dumps({"type": "down", "name": "proxy-disabled"}).encode(), "bad request body"),
    ],
    ids=["malformed-json", "invalid-stream", "unknown-type", "negative-latency",
         "unknown-attribute", "toxicity-above-1", "reserved-name"],
)
def test_http_bad_toxic_statuses(tmp_path: Path, body: bytes, error: str) -> None:
    """A toxic that Toxiproxy would refuse gets 400 and the reason."""
    with held_run(tmp_path) as held:
        status, document = request(held.api_port, "POST", TOXICS, raw=body,
                                   headers={"Content-Type": "application/json"})

        assert status == 400
        assert document["status"] == 400
        assert document["error"].startswith(error)
        assert held.rehearsal.site.proxies[LINK].faults.specs() == []


def test_http_proxy_requests(tmp_path: Path) -> None:
    """Proxy create, update and populate return what Toxiproxy returns, errors included."""
    with held_run(tmp_path) as held:
        port = held.api_port
        pacs = f"127.0.0.1:{held.rehearsal.site.ports['pacs'][1]}"

        assert request(port, "POST", "/proxies", {"name": "x"}) == (
            400, {"error": "missing required field: upstream", "status": 400})
        assert request(port, "POST", "/proxies", {"upstream": pacs}) == (
            400, {"error": "missing required field: name", "status": 400})
        assert request(port, "POST", "/proxies",
                       {"name": "x", "upstream": pacs, "listen": "0.0.0.0:0"})[0] == 400

        status, created = request(port, "POST", "/proxies", {"name": "x", "upstream": pacs})
        assert status == 201
        assert created["enabled"] is True
        assert created["toxics"] == []

        status, updated = request(port, "POST", "/proxies/x", {"enabled": False})
        assert (status, updated["enabled"], updated["listen"]) == (200, False, created["listen"])

        populate = [{"name": "x", "upstream": pacs, "listen": created["listen"]},
                    {"name": "y", "upstream": pacs}]
        status, populated = request(port, "POST", "/populate", populate)
        assert status == 201
        assert [p["name"] for p in populated["proxies"]] == ["x", "y"]
        assert populated["proxies"][0]["enabled"] is False, "an unchanged proxy is kept as it is"

        assert request(port, "POST", "/populate", [{"name": "z"}]) == (
            400, {"error": "missing required field: upstream at proxy 1", "status": 400})
        assert request(port, "PATCH", f"/proxies/{LINK}", {"upstream": "127.0.0.1:9"})[0] == 409
        assert request(port, "POST", "/reset") == (204, None)
        assert request(port, "DELETE", "/proxies/y") == (204, None)


def test_http_toxic_update_merges(tmp_path: Path) -> None:
    """Updating a toxic merges its attributes and keeps the toxicity unless given."""
    with held_run(tmp_path) as held:
        port = held.api_port
        request(port, "POST", TOXICS, {"name": "lag", "type": "latency", "toxicity": 0.25,
                                       "attributes": {"latency": 50, "jitter": 5}})
        status, updated = request(port, "POST", f"{TOXICS}/lag", {"attributes": {"latency": 80}})
        status_patch, patched = request(port, "PATCH", f"{TOXICS}/lag", {"toxicity": 1})
        _, listed = request(port, "GET", TOXICS)

        assert (status, updated["attributes"], updated["toxicity"]) == (
            200, {"latency": 80, "jitter": 5}, 0.25)
        assert (status_patch, patched["toxicity"]) == (200, 1.0)
        assert listed == [patched]


def test_http_rejects_browsers_and_methods(tmp_path: Path) -> None:
    """A browser's User-Agent gets 403 and an unknown method on a route gets 405."""
    with held_run(tmp_path) as held:
        port = held.api_port
        browser = request(port, "GET", "/proxies",
                          headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
        put = request(port, "PUT", "/proxies")

        assert browser[0] == 403
        assert put == (405, {"error": "method not allowed", "status": 405})


# The Toxiproxy backend, against the API of a held run.


CT_TRANSFER_SYNTAXES = ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "JPEG2000Lossless",
                        "JPEG2000"]
"""What the three bundled CT/ files need: explicit VR, JPEG 2000 and JPEG 2000 lossless."""


def backend_topology(api_port: int) -> dict[str, Any]:
    return {
        "site": "backend-site",
        "faults": {"backend": "toxiproxy", "url": f"http://127.0.0.1:{api_port}"},
        "nodes": {
            "ct": {"kind": "modality", "ae_title": "CT", "sop_classes": ["CTImageStorage"],
                   "transfer_syntaxes": CT_TRANSFER_SYNTAXES},
            "pacs": {"kind": "pacs", "ae_title": "PACS", "sop_classes": ["CTImageStorage"],
                     "transfer_syntaxes": CT_TRANSFER_SYNTAXES},
        },
        "links": [{
            "from": "ct", "to": "pacs",
            "faults": [{"name": "wan", "type": "latency", "direction": "upstream",
                        "attributes": {"latency": 20}}],
        }],
    }


BACKEND_SCENARIO = {
    "name": "through-toxiproxy", "corpus": "bundled", "timeout_s": 120,
    "senders": [{"modality": "ct", "select": {"glob": ["CT/**"]}, "group_by": "instance"}],
    "timeline": [
        {"action": "start_sending", "at_s": 0},
        {"action": "add_fault", "after": {"sent": 1}, "link": "ct->pacs",
         "fault": {"name": "thin", "type": "bandwidth", "attributes": {"rate": 100000}}},
        {"action": "update_fault", "after": {"sent": 2}, "link": "ct->pacs", "name": "wan",
         "attributes": {"jitter": 5}},
        {"action": "remove_fault", "after": {"sent": 3}, "link": "ct->pacs", "name": "thin"},
    ],
    "expectations": [{"delivered": {"to": "pacs"}}],
}


def test_backend_drives_toxics_on_toxiproxy(tmp_path: Path) -> None:
    """The backend creates a proxy per link on the server and drives the link's toxics there."""
    with held_run(tmp_path / "api") as held:
        backend_run = prepare(tmp_path / "backend", backend_topology(held.api_port),
                              BACKEND_SCENARIO)
        result = asyncio.run(backend_run.run())
        remote = proxy_name("backend-site", "ct->pacs")
        left_after = set(client(held.api_port).proxies())
        faults = backend_run.site.proxies["ct->pacs"].faults
    api_events = [e for e in held.events() if e.get("link") == remote]
    fault_events = [(e["kind"], e["fault"], e["attributes"]) for e in api_events
                    if e["kind"].startswith("link.fault_")]

    assert result.expectations_held
    assert isinstance(faults, ToxiproxyLinkFaults)
    assert [e["kind"] for e in api_events].count("toxiproxy.proxy_created") == 1
    assert [e["kind"] for e in api_events].count("link.connection_opened") >= 1
    assert ("link.fault_added", "wan", {"latency": 20, "jitter": 0}) in fault_events
    assert ("link.fault_added", "thin", {"rate": 100000}) in fault_events
    assert ("link.fault_updated", "wan", {"latency": 20, "jitter": 5}) in fault_events
    assert ("link.fault_removed", "thin", {"rate": 100000}) in fault_events
    assert remote not in left_after, "the backend deletes its proxies when the run ends"


def test_backend_down_fault_stays_local(tmp_path: Path) -> None:
    """A down fault stays in the simulator's proxy while a latency goes to the server."""
    recorder = Recorder(tmp_path / "backend-events.jsonl", "backend-unit")

    async def add_faults(api_port: int, upstream_port: int) -> tuple[list[str], list[str]]:
        backend = ToxiproxyBackend(f"http://127.0.0.1:{api_port}", "unit-site", recorder)
        await backend.start()
        faults, _, _ = await backend.add_link("a->b", "127.0.0.1", upstream_port, 0,
                                              BoundRecorder(recorder, {"link": "a->b"}))
        faults.add(FaultSpec(name="cut", type="down"))
        faults.add(FaultSpec(name="lag", type="latency", attributes={"latency": 5}))
        remote = client(api_port).get_proxy(proxy_name("unit-site", "a->b"))
        remote_toxics = list(remote.toxics())
        await backend.stop()
        return remote_toxics, [spec.name for spec in faults.specs()]

    with held_run(tmp_path / "api") as held:
        remote_toxics, all_faults = asyncio.run(
            add_faults(held.api_port, held.rehearsal.site.ports["pacs"][1]))
    recorder.close()

    assert remote_toxics == ["lag"]
    assert all_faults == ["cut", "lag"]


def test_backend_unreachable_names_url(tmp_path: Path) -> None:
    """A backend whose server is unreachable stops the run with an error naming the URL."""
    port = free_port()
    rehearsal = prepare(tmp_path, backend_topology(port), BACKEND_SCENARIO)

    with pytest.raises(ToxiproxyError, match=f"cannot reach Toxiproxy at http://127.0.0.1:{port}"):
        asyncio.run(rehearsal.run())


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"backend": "toxiproxy"}, "backend toxiproxy needs url"),
        ({"backend": "toxiproxy", "url": "https://127.0.0.1:8474"}, "the scheme must be http://"),
        ({"backend": "simulator", "url": "http://127.0.0.1:8474"}, "url applies only to"),
        ({"backend": "chaos-monkey"}, "backend"),
    ],
    ids=["missing-url", "https-url", "url-without-backend", "unknown-backend"],
)
def test_topology_fault_backend_checked(tmp_path: Path, faults: dict[str, Any],
                                        message: str) -> None:
    """An invalid faults section of a topology is reported with the fix."""
    path = tmp_path / "topology.yaml"
    path.write_text(json.dumps({**api_topology(), "faults": faults}), encoding="utf-8")

    with pytest.raises(ConfigError, match=message):
        load_topology(path)
