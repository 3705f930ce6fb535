"""The live event stream against a real Mosquitto on loopback, and ``rehearse watch``.

Each test runs a small rehearsal with a broker that a test subscriber
(paho-mqtt) also listens to, then compares what arrived with the run's
``events.jsonl`` and ``summary.json``. The broker is restarted in the
middle of one run, absent from the start of another, and behind TLS with
a password for a third.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trustme
from peers import LOOPBACK_HOST, Mosquitto, free_port

from simulator.corpus import bundled_corpus
from simulator.errors import ConfigError
from simulator.live.publisher import MqttPublisher, event_topic
from simulator.live.settings import MqttSettings
from simulator.runner import Rehearsal, RunOptions, RunResult
from simulator.scenario import load_scenario
from simulator.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
WAIT_LIMIT_S = 60.0
"""Guard against a hung run, broker or subscriber; no test checks how long anything takes."""

@pytest.fixture(scope="module", autouse=True)
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the bundled corpus once for this module, in a cache folder of its own."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        yield bundled_corpus()


# A small site: a CT scanner, a PACS, and a gate node that a test opens to go on.


def site(**extra: Any) -> dict[str, Any]:
    pacs = {"kind": "pacs", "sop_classes": ["CTImageStorage"]}
    return {
        "site": "mqtt-site",
        "nodes": {
            "ct": {"kind": "modality", "ae_title": "CT", "send_to": "pacs",
                   "sop_classes": ["CTImageStorage"]},
            "pacs": {**pacs, "ae_title": "PACS"},
            "gate": {**pacs, "ae_title": "GATE"},
        },
        "links": [{"from": "ct", "to": "pacs"}, {"from": "ct", "to": "gate"}],
        **extra,
    }


def sender(name: str, copy: int = 0) -> dict[str, Any]:
    return {"modality": "ct", "name": name, "copy": copy, "group_by": "instance",
            "select": {"glob": ["CT/CT_small.dcm"]}}


SEND_ONCE = {
    "name": "send-once", "corpus": "bundled", "timeout_s": 120, "senders": [sender("first")],
    "expectations": [{"delivered": {"to": "pacs"}}],
}

SEND_TWICE_WITH_GATE = {
    "name": "send-twice", "corpus": "bundled", "timeout_s": 120,
    "senders": [sender("first"), sender("second", copy=1)],
    "timeline": [
        {"action": "start_sending", "at_s": 0, "senders": ["first"]},
        {"action": "start_sending", "after": {"association_on": "ct->gate"},
         "senders": ["second"]},
    ],
    "expectations": [{"delivered": {"to": "pacs"}}],
}


def write_inputs(folder: Path, topology: dict[str, Any], scenario: dict[str, Any]) -> tuple[Path, Path]:
    """Write the inputs as YAML (JSON is valid YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology-input.yaml"
    scenario_path = folder / "scenario-input.yaml"
    topology_path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    return topology_path, scenario_path


def prepare(folder: Path, topology: dict[str, Any], scenario: dict[str, Any],
            mqtt: MqttSettings | None = None) -> Rehearsal:
    topology_path, scenario_path = write_inputs(folder, topology, scenario)
    loaded = load_topology(topology_path)
    options = RunOptions(topology_path, scenario_path, folder / "run", mqtt=mqtt)
    return Rehearsal(loaded, load_scenario(scenario_path, loaded), options)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def fast_settings(port: int, **fields: Any) -> MqttSettings:
    """Settings that notice a lost broker quickly, for tests that stop it."""
    values: dict[str, Any] = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5,
                              "publish_timeout_s": 1.0, **fields}
    return MqttSettings(LOOPBACK_HOST, port, **values)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Subscriber:
    """A paho-mqtt client on ``rehearsal/#`` that reconnects by itself and keeps every message."""

    port: int
    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    connections: int = 0
    _client: paho.Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Subscriber:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.connect(LOOPBACK_HOST, self.port)
        client.loop_start()
        self._client = client
        wait_until(lambda: self.connections >= 1, "the test subscriber to connect")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe("rehearsal/#", qos=1)
        with self._lock:
            self.connections += 1

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(t, m) for t, m, _ in self.messages if not t.endswith("/status")]

    def statuses(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m, _ in self.messages if t.endswith("/status")]

    def finished(self, run_id: str) -> bool:
        return any(s.get("run_id") == run_id and s.get("state") == "finished"
                   for s in self.statuses())


@pytest.fixture
def subscriber() -> Iterator[Callable[[int], Subscriber]]:
    """Factory of test subscribers, disconnected when the test ends."""
    started: list[Subscriber] = []

    def start(port: int) -> Subscriber:
        started.append(Subscriber(port).start())
        return started[-1]

    yield start
    for sub in started:
        sub.stop()


def test_events_published_as_logged(tmp_path: Path, mosquitto: Callable[..., Mosquitto],
                                    subscriber: Callable[[int], Subscriber]) -> None:
    """Every event of events.jsonl arrives on its topic as the same JSON, and the status ends finished."""
    broker = mosquitto()
    sub = subscriber(broker.port)
    topology = site(events={"mqtt": f"mqtt://{LOOPBACK_HOST}:{broker.port}"})
    rehearsal = prepare(tmp_path, topology, SEND_ONCE)

    result = asyncio.run(rehearsal.run())
    wait_until(lambda: sub.finished(result.run_id), "the finished status")
    logged = read_events(result.run_dir)
    received = sub.events()
    final = [s for s in sub.statuses() if s["state"] == "finished"][-1]

    # Events that two threads record at the same moment may swap places on the wire.
    assert {m["seq"]: m for _, m in received} == {e["seq"]: e for e in logged}
    assert {m["seq"]: t for t, m in received} == {
        e["seq"]: event_topic(result.run_id, e) for e in logged}
    assert len(received) == len(logged)
    assert f"rehearsal/{result.run_id}/pacs/instance.stored" in [t for t, _ in received]
    assert f"rehearsal/{result.run_id}/ct->pacs/link.connection_opened" in [t for t, _ in received]
    assert f"rehearsal/{result.run_id}/run/run.finished" in [t for t, _ in received]
    assert read_summary(result.run_dir)["mqtt"] == {
        "broker": f"{LOOPBACK_HOST}:{broker.port}", "published": len(logged), "dropped": 0,
        "reconnects": 0}
    assert (final["outcome"], final["expectations_held"]) == ("finished", True)
    assert final["delivered"] == 1


def test_broker_restart_mid_run(tmp_path: Path, mosquitto: Callable[..., Mosquitto],
                                subscriber: Callable[[int], Subscriber]) -> None:
    """After a broker restart the publisher reconnects, later events arrive and counts add up."""
    broker = mosquitto()
    sub = subscriber(broker.port)
    rehearsal = prepare(tmp_path, site(), SEND_TWICE_WITH_GATE, fast_settings(broker.port))
    with run_in_thread(rehearsal) as results:
        wait_until(lambda: any(m["kind"] == "sender.finished" for _, m in sub.events()),
                   "the first sender to finish")
        broker.restart()
        wait_until(lambda: sub.connections >= 2, "the test subscriber to reconnect")
        wait_until(lambda: _logged_kinds(rehearsal).count("mqtt.reconnected") == 1,
                   "the publisher to reconnect")
        open_gate(rehearsal)
    wait_until(lambda: sub.finished(rehearsal.run_id), "the finished status")
    logged = read_events(rehearsal.run_dir)
    gate_seq = next(e["seq"] for e in logged
                    if e["kind"] == "link.connection_opened" and e["link"] == "ct->gate")
    received = {m["seq"] for _, m in sub.events()}
    counts = read_summary(rehearsal.run_dir)["mqtt"]

    assert results and results[0].expectations_held
    assert {e["seq"] for e in logged if e["seq"] >= gate_seq} <= received
    assert "run.finished" in [m["kind"] for _, m in sub.events()]
    assert counts["published"] + counts["dropped"] == len(logged)
    assert counts["dropped"] == 0
    assert counts["reconnects"] >= 1
    assert [k for k in _logged_kinds(rehearsal) if k.startswith("mqtt.")] == [
        "mqtt.connected", "mqtt.connection_lost", "mqtt.reconnected"]


@contextmanager
def run_in_thread(rehearsal: Rehearsal) -> Iterator[list[RunResult]]:
    """Run ``rehearsal`` in a thread for the block; the list gets its result once it ends."""
    results: list[RunResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(rehearsal.run()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="rehearsal", daemon=True)
    thread.start()
    try:
        yield results
    finally:
        thread.join(WAIT_LIMIT_S)
    assert not thread.is_alive(), "the rehearsal did not end"
    if errors:
        raise errors[0]


def open_gate(rehearsal: Rehearsal) -> None:
    """Open one connection on ct->gate, which starts the second sender of SEND_TWICE_WITH_GATE."""
    wait_until(lambda: "ct->gate" in rehearsal.site.proxies, "the gate link to start")
    with socket.create_connection((LOOPBACK_HOST, rehearsal.site.proxies["ct->gate"].port)):
        pass


def _logged_kinds(rehearsal: Rehearsal) -> list[str]:
    path = rehearsal.run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["kind"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_broker_down_from_start(tmp_path: Path) -> None:
    """With no broker the run completes, every event is counted as dropped, one failure is logged."""
    port = free_port()
    rehearsal = prepare(tmp_path, site(), SEND_ONCE, fast_settings(port))

    result = asyncio.run(rehearsal.run())
    logged = read_events(result.run_dir)
    counts = read_summary(result.run_dir)["mqtt"]

    assert result.expectations_held
    assert counts["published"] == 0
    assert counts["dropped"] == len(logged) > 0
    assert [e["kind"] for e in logged].count("mqtt.connect_failed") == 1
    assert "Connection refused" in next(e for e in logged if e["kind"] == "mqtt.connect_failed")["error"]


def test_buffer_drops_oldest(mosquitto: Callable[..., Mosquitto],
                             subscriber: Callable[[int], Subscriber]) -> None:
    """A full buffer drops its oldest events; the newest are published once connected."""
    broker = mosquitto()
    sub = subscriber(broker.port)

    async def offer_then_publish() -> Any:
        publisher = MqttPublisher(fast_settings(broker.port, buffer_events=3), "buffer-test", dict)
        for seq in range(1, 8):
            publisher.offer({"seq": seq, "kind": "test.event"})
        publisher.start()
        return await publisher.stop({"outcome": "finished"})

    counts = asyncio.run(offer_then_publish())
    wait_until(lambda: sub.finished("buffer-test"), "the finished status")

    assert [m["seq"] for _, m in sub.events()] == [5, 6, 7]
    assert (counts.published, counts.dropped) == (3, 4)


def test_topic_levels_are_cleaned() -> None:
    """Characters with a meaning in MQTT topics are replaced in the node, link and kind levels."""
    event = {"link": "a/b+c#d", "kind": "link.pdu"}

    assert event_topic("run-1", event) == "rehearsal/run-1/a_b_c_d/link.pdu"
    assert event_topic("run-1", {"kind": "run.started"}) == "rehearsal/run-1/run/run.started"
    assert event_topic("run-1", {"node": "pacs", "link": "x->pacs", "kind": "k"}) == (
        "rehearsal/run-1/pacs/k")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://lab-user:{secret}@127.0.0.1:1883", "contains a user name or password"),
        ("http://127.0.0.1:1883", "the scheme must be mqtt:// or mqtts://"),
        ("mqtt://127.0.0.1:1883/rehearsal", "remove the path"),
    ],
    ids=["credentials", "scheme", "path"],
)
def test_topology_events_url_checked(tmp_path: Path, url: str, message: str) -> None:
    """An invalid broker URL in a topology is reported without the password it contains."""
    secret = secrets.token_hex(8)
    path = tmp_path / "topology.yaml"
    path.write_text(json.dumps(site(events={"mqtt": url.format(secret=secret)})), encoding="utf-8")

    with pytest.raises(ConfigError, match=message) as caught:
        load_topology(path)

    assert secret not in str(caught.value)


# A broker with TLS and a password, the CLI, and rehearse watch.


class SecureMosquitto(Mosquitto):
    """Mosquitto with TLS on its listener and one user in a password file."""

    def __init__(self, workdir: Path, ca: trustme.CA, username: str, password: str) -> None:
        super().__init__(workdir)
        self.ca = ca
        self.username = username
        self.password = password

    def _prepare(self) -> None:
        cert = self.ca.issue_cert(LOOPBACK_HOST)
        cert_path, key_path = self.workdir / "broker.pem", self.workdir / "broker.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        passwords = self.workdir / "passwords"
        passwords.write_text(f"{self.username}:{self.password}\n", encoding="utf-8")
        subprocess.run(["/usr/bin/mosquitto_passwd", "-U", str(passwords)], check=True,
                       capture_output=True)
        # Mosquitto started as root switches to the user "mosquitto", which cannot
        # read files under the test's private tmp_path; stay the user who runs the tests.
        self.config_path.write_text(
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} {LOOPBACK_HOST}\n"
            f"certfile {cert_path}\nkeyfile {key_path}\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence false\n"
            "log_dest stderr\n"
        )


@pytest.fixture
def secure_broker(tmp_path: Path, mosquitto: Callable[..., Mosquitto]) -> Iterator[SecureMosquitto]:
    """A TLS broker with a random user and password, and the CA file that trusts it."""
    ca = trustme.CA()
    broker = SecureMosquitto(tmp_path / "secure-broker", ca, f"user-{secrets.token_hex(6)}",
                             secrets.token_urlsafe(18))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    broker.start()
    yield broker
    broker.stop()


def rehearse(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *(str(a) for a in args)], cwd=REPO,
        capture_output=True, text=True, timeout=WAIT_LIMIT_S * 2, check=False,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_credentials_never_written(tmp_path: Path, secure_broker: SecureMosquitto) -> None:
    """A run over TLS with a password publishes everything and no file or output has the credentials."""
    topology_path, scenario_path = write_inputs(tmp_path / "inputs", site(), SEND_ONCE)
    run_dir = tmp_path / "run"
    secret_env = {"LAB_BROKER_SECRET": secure_broker.password}
    completed = rehearse(
        "run", topology_path, scenario_path, "--out", run_dir, "--no-progress",
        "--mqtt", f"mqtts://{LOOPBACK_HOST}:{secure_broker.port}",
        "--mqtt-ca-file", tmp_path / "ca.pem", "--mqtt-username", secure_broker.username,
        "--mqtt-password-env", "LAB_BROKER_SECRET", env=secret_env,
    )
    counts = read_summary(run_dir)["mqtt"]
    logged = read_events(run_dir)
    written = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())

    assert completed.returncode == 0, completed.stderr
    assert counts["published"] == len(logged)
    assert counts["dropped"] == 0
    for credential in (secure_broker.username, secure_broker.password):
        assert credential.encode() not in written
        assert credential not in completed.stdout + completed.stderr


def test_wrong_password_drops_events(tmp_path: Path, secure_broker: SecureMosquitto) -> None:
    """A refused password fails the connection, not the run; the error omits the password."""
    wrong = secrets.token_urlsafe(18)
    settings = MqttSettings(LOOPBACK_HOST, secure_broker.port, tls=True,
                            ca_file=tmp_path / "ca.pem", username=secure_broker.username,
                            password=wrong, reconnect_initial_s=0.1, reconnect_max_s=0.5)
    rehearsal = prepare(tmp_path, site(), SEND_ONCE, settings)

    result = asyncio.run(rehearsal.run())
    logged = read_events(result.run_dir)
    failure = next(e for e in logged if e["kind"] == "mqtt.connect_failed")

    assert result.expectations_held
    assert read_summary(result.run_dir)["mqtt"]["published"] == 0
    assert wrong not in json.dumps(failure)
    assert wrong not in repr(settings)


def test_watch_ends_when_run_finishes(tmp_path: Path, secure_broker: SecureMosquitto) -> None:
    """rehearse watch RUN_ID shows the run's links and exits 0 once its status is finished."""
    settings = MqttSettings(LOOPBACK_HOST, secure_broker.port, tls=True, ca_file=tmp_path / "ca.pem",
                            username=secure_broker.username, password=secure_broker.password)
    rehearsal = prepare(tmp_path, site(), SEND_TWICE_WITH_GATE, settings)
    env = {"REHEARSE_MQTT_USERNAME": secure_broker.username,
           "REHEARSE_MQTT_PASSWORD": secure_broker.password}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "simulator", "watch",
         f"mqtts://{LOOPBACK_HOST}:{secure_broker.port}", rehearsal.run_id,
         "--mqtt-ca-file", str(tmp_path / "ca.pem")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    try:
        assert watcher.stderr is not None
        subscribed = watcher.stderr.readline()
        with run_in_thread(rehearsal) as results:
            open_gate(rehearsal)
        stdout, stderr = watcher.communicate(timeout=WAIT_LIMIT_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert subscribed.startswith(f"subscribed to rehearsal/{rehearsal.run_id}/#")
    assert results and results[0].expectations_held
    assert watcher.returncode == 0, stderr
    assert f"Run {rehearsal.run_id}: finished" in stdout
    assert "ct->pacs" in stdout
    assert secure_broker.password not in stdout + stderr + subscribed
