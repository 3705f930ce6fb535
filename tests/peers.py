"""Real DICOM and MQTT peers on loopback for tests.

Each peer class starts one child process on a free 127.0.0.1 port, waits until
its ports accept TCP connections, and on stop ends only that process (SIGTERM,
then SIGKILL after a grace period). Its output goes to a log file in its work
directory, and start errors quote the end of that log.

Peers: DCMTK's storescp (`DcmtkStoreSCP`), Orthanc (`Orthanc`) and Mosquitto
(`Mosquitto`). `dcmtk_storescu` and `dcmtk_echoscu` run DCMTK's SCUs once.

DCMTK binaries are called by absolute path because pynetdicom installs its own
`storescp` and `storescu` apps into the venv, which would shadow DCMTK's.
storescp and Orthanc listen on all interfaces, so send them traffic only over
127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

__all__ = [
    "ECHOSCU_PATH",
    "LOOPBACK_HOST",
    "MOSQUITTO_PATH",
    "ORTHANC_PATH",
    "STORESCP_PATH",
    "STORESCU_PATH",
    "DcmtkStoreSCP",
    "Mosquitto",
    "Orthanc",
    "PeerError",
    "PeerStartError",
    "dcmtk_echoscu",
    "dcmtk_storescu",
    "free_port",
]

LOOPBACK_HOST = "127.0.0.1"
STORESCP_PATH = Path("/usr/bin/storescp")
STORESCU_PATH = Path("/usr/bin/storescu")
ECHOSCU_PATH = Path("/usr/bin/echoscu")
ORTHANC_PATH = Path("/usr/sbin/Orthanc")
MOSQUITTO_PATH = Path("/usr/sbin/mosquitto")

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_GRACE_S = 5.0
DEFAULT_SCU_TIMEOUT_S = 60.0
DEFAULT_HTTP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.05


class PeerError(Exception):
    """Base class for errors raised by the test peers."""


class PeerStartError(PeerError):
    """A peer process exited or did not listen before its start deadline."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now.

    NOTE: another process may take the port between this call and the peer's
    bind. A peer that then fails to start raises `PeerStartError`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        port: int = sock.getsockname()[1]

    return port


def dcmtk_environment() -> dict[str, str]:
    """Return this process's environment with TCP_NODELAY=1 for DCMTK.

    DCMTK 3.6.7 disables Nagle's algorithm only when TCP_NODELAY=1 is set, and
    without that each DIMSE exchange waits about 40 ms for delayed ACKs.
    """
    return {**os.environ, "TCP_NODELAY": "1"}


def _require_loopback(host: str) -> None:
    """Raise ValueError unless `host` is a loopback address or "localhost"."""
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        msg = f"host {host!r} is not a loopback address; test peers only talk to 127.0.0.0/8 or ::1"
        raise ValueError(msg)


def _read_log_tail(log_path: Path, line_count: int = LOG_TAIL_LINES) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"

    return "\n".join(lines[-line_count:]) or "(log is empty)"


def _port_accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class _PeerProcess:
    """One child process with a log file, a readiness wait and a PID-based stop."""

    name = "peer"

    def __init__(self, workdir: Path, start_timeout_s: float, stop_grace_s: float) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _listening_ports(self) -> list[int]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dcmtk_environment()

    def _prepare(self) -> None:
        """Write config files and create directories before the process starts."""

    def _wait_until_serving(self, deadline: float) -> None:
        """Wait until the peer serves requests, when open ports are not enough to tell."""

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Return everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        """Start the process and wait until every port accepts TCP connections."""
        if self._process is not None:
            msg = f"{self.name} is already running with PID {self._process.pid}"
            raise PeerError(msg)

        self._prepare()
        command = self._command()
        # Append, so a restarted peer keeps the log of its earlier runs.
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- starting: {' '.join(command)}\n".encode())
            log_file.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.workdir,
            )

        deadline = time.monotonic() + self.start_timeout_s
        try:
            for port in self._listening_ports():
                self._wait_for_port(port, deadline)
            self._wait_until_serving(deadline)
        except BaseException:
            self.stop()
            raise

        return self

    def _wait_for_port(self, port: int, deadline: float) -> None:
        while not _port_accepts_connections(port):
            self._raise_if_exited(f"before listening on {LOOPBACK_HOST}:{port}")
            if time.monotonic() > deadline:
                self._raise_start_error(
                    f"did not listen on {LOOPBACK_HOST}:{port} within {self.start_timeout_s} s"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _raise_if_exited(self, when: str) -> None:
        assert self._process is not None
        returncode = self._process.poll()
        if returncode is not None:
            self._raise_start_error(f"exited with code {returncode} {when}")

    def _raise_start_error(self, problem: str) -> NoReturn:
        msg = (
            f"{self.name} {problem}. Last lines of {self.log_path}:\n"
            f"{_read_log_tail(self.log_path)}"
        )
        raise PeerStartError(msg)

    def stop(self) -> None:
        """End the process this object started: SIGTERM, then SIGKILL after the grace period."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class DcmtkStoreSCP(_PeerProcess):
    """DCMTK's storescp writing every received instance to `output_dir`.

    `extra_args` go to storescp before the port, so its fault switches work:
    `--refuse`, `--reject`, `--sleep-during S`, `--sleep-after S`,
    `--abort-during`, `--abort-after`, `-pdu BYTES`, `-ta S`, `-td S`, and an
    association profile with `-xf CONFIG_FILE PROFILE` (for example
    /etc/dcmtk/storescp.cfg with profile Default or AllDICOM).
    """

    name = "storescp"

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "STORESCP",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        super().__init__(workdir, start_timeout_s, stop_grace_s)
        self.ae_title = ae_title
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.output_dir = self.workdir / "received"

    def _prepare(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            str(STORESCP_PATH),
            "--verbose",
            "--disable-host-lookup",
            "--aetitle",
            self.ae_title,
            "--output-directory",
            str(self.output_dir),
            *self.extra_args,
            str(self.port),
        ]

    def _listening_ports(self) -> list[int]:
        return [self.port]

    def received_files(self) -> list[Path]:
        """Return the files storescp wrote, sorted, including sort subfolders."""
        return sorted(path for path in self.output_dir.rglob("*") if path.is_file())


def _run_dcmtk_scu(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dcmtk_environment(),
        timeout=timeout_s,
        check=False,
    )


def dcmtk_storescu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    files: Iterable[Path | str],
    extra_args: Sequence[str] = (),
    timeout_s: float = DEFAULT_SCU_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Send `files` with DCMTK's storescu and return the finished process.

    The caller checks `returncode`. Raises `subprocess.TimeoutExpired` after
    `timeout_s` seconds and ValueError when `host` is not a loopback address.
    """
    _require_loopback(host)
    command = [
        str(STORESCU_PATH),
        "--verbose",
        "--aetitle",
        calling_ae,
        "--call",
        called_ae,
        *extra_args,
        host,
        str(port),
        *(str(path) for path in files),
    ]

    return _run_dcmtk_scu(command, timeout_s)


def dcmtk_echoscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout_s: float = DEFAULT_SCU_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with DCMTK's echoscu and return the finished process.

    The caller checks `returncode`. Raises `subprocess.TimeoutExpired` after
    `timeout_s` seconds and ValueError when `host` is not a loopback address.
    """
    _require_loopback(host)
    command = [
        str(ECHOSCU_PATH),
        "--verbose",
        "--aetitle",
        calling_ae,
        "--call",
        called_ae,
        *extra_args,
        host,
        str(port),
    ]

    return _run_dcmtk_scu(command, timeout_s)


# Keys that the Orthanc class sets itself, mapped to how a caller controls them.
_ORTHANC_MANAGED_KEYS = {
    "DicomAet": "pass ae_title instead",
    "DicomPort": "the class picks a free port and stores it in .dicom_port",
    "HttpPort": "the class picks a free port and stores it in .http_port",
    "StorageDirectory": "the class stores data under workdir",
    "IndexDirectory": "the class stores data under workdir",
}

# A proxy set in the environment must never see requests meant for 127.0.0.1.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Orthanc(_PeerProcess):
    """Orthanc with its DICOM and REST servers on free ports, storing in `workdir`.

    `config_overrides` is merged into the generated configuration, for example
    `{"DicomCheckCalledAet": True}` or `{"DicomModalities": {"scu": ["SCU",
    "127.0.0.1", 11112]}}`. Orthanc 1.10.1 (Debian 12) also reads
    DicomAlwaysAllowEcho, DicomAlwaysAllowStore, AcceptedTransferSyntaxes,
    MaximumPduLength, UnknownSopClassAccepted and DicomScpTimeout.
    """

    name = "orthanc"

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "ORTHANC",
        config_overrides: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        super().__init__(workdir, start_timeout_s, stop_grace_s)
        overrides = dict(config_overrides or {})
        for key in overrides.keys() & _ORTHANC_MANAGED_KEYS.keys():
            msg = f"config_overrides must not set {key!r} ({_ORTHANC_MANAGED_KEYS[key]})"
            raise ValueError(msg)
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.extra_args = list(extra_args)
        self.config_path = self.workdir / "orthanc.json"
        self.config = self._base_config() | overrides

    def _base_config(self) -> dict[str, Any]:
        return {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            # Orthanc binds its HTTP port on all interfaces, so this makes it
            # reject requests that come from other hosts.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "TcpNoDelay": True,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": {},
            "OrthancPeers": {},
        }

    def _prepare(self) -> None:
        Path(self.config["StorageDirectory"]).mkdir(parents=True, exist_ok=True)
        Path(self.config["IndexDirectory"]).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def _command(self) -> list[str]:
        return [str(ORTHANC_PATH), *self.extra_args, str(self.config_path)]

    def _listening_ports(self) -> list[int]:
        return [self.http_port, self.dicom_port]

    def _wait_until_serving(self, deadline: float) -> None:
        # The REST API can respond before the database is ready, so wait for /system.
        while True:
            try:
                self.rest_get("/system", timeout_s=1.0)
                return
            except OSError:
                self._raise_if_exited("before its REST API answered")
                if time.monotonic() > deadline:
                    self._raise_start_error(
                        f"REST API did not answer within {self.start_timeout_s} s"
                    )
                time.sleep(_POLL_INTERVAL_S)

    def rest_get(self, path: str, timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> Any:
        """GET `path` from the REST API on 127.0.0.1 and return the decoded JSON."""
        url = f"http://{LOOPBACK_HOST}:{self.http_port}{path}"
        with _NO_PROXY_OPENER.open(url, timeout=timeout_s) as response:
            return json.load(response)

    def instances(self) -> list[str]:
        """Return the Orthanc IDs of all stored instances."""
        instance_ids: list[str] = self.rest_get("/instances")

        return instance_ids

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Return one instance's tags as a keyword-to-value dictionary."""
        quoted_id = urllib.parse.quote(instance_id, safe="")
        tags: dict[str, Any] = self.rest_get(f"/instances/{quoted_id}/simplified-tags")

        return tags


class Mosquitto(_PeerProcess):
    """Mosquitto accepting anonymous MQTT clients on 127.0.0.1 only, without persistence."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        super().__init__(workdir, start_timeout_s, stop_grace_s)
        self.port = port if port is not None else free_port()
        self.config_path = self.workdir / "mosquitto.conf"

    def _prepare(self) -> None:
        self.config_path.write_text(
            f"listener {self.port} {LOOPBACK_HOST}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            "log_type notice\n"
            "log_type information\n"
            "log_timestamp true\n"
        )

    def _command(self) -> list[str]:
        return [str(MOSQUITTO_PATH), "-c", str(self.config_path)]

    def _listening_ports(self) -> list[int]:
        return [self.port]

    def restart(self) -> Self:
        """Stop the broker and start it again on the same port, dropping all sessions."""
        self.stop()

        return self.start()
