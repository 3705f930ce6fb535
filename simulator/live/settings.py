"""Settings of the live event stream: the MQTT broker, its credentials and TLS.

The broker URL is ``mqtt://HOST[:PORT]`` (port 1883 by default) or
``mqtts://HOST[:PORT]`` for TLS (port 8883 by default). It may appear in a
topology file, which every run copies into its run directory, so a URL with
a user name or password is rejected. Credentials come only from command-line
options and environment variables, and no run file or log gets them.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from simulator.errors import SimulatorError

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
DEFAULT_BUFFER_EVENTS = 10_000
"""Events kept while the broker is unreachable; past this the oldest are dropped."""

USERNAME_ENV = "REHEARSE_MQTT_USERNAME"
PASSWORD_ENV = "REHEARSE_MQTT_PASSWORD"

TOPIC_ROOT = "rehearsal"
"""First level of every topic: ``rehearsal/<run id>/<node, link or run>/<event kind>``."""


class LiveError(SimulatorError):
    """Root of the errors of the live event stream: settings, broker and watch."""


class MqttUrlError(LiveError, ValueError):
    """An MQTT broker URL is invalid; the message names the URL part and the fix."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @property
    def display(self) -> str:
        """``host:port``, with brackets around an IPv6 address; never any credential."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """Return the broker address of ``url``; raise MqttUrlError when it is not usable."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttUrlError(
            f"MQTT URL {_redacted(url)!r}: the scheme must be mqtt:// or mqtts:// (TLS), "
            "as in mqtt://127.0.0.1:1883"
        )
    if parts.username is not None or parts.password is not None:
        raise MqttUrlError(
            f"MQTT URL {_redacted(url)!r} contains a user name or password; remove them and "
            f"give --mqtt-username and --mqtt-password-env, or set {USERNAME_ENV} and "
            f"{PASSWORD_ENV}, so that no run file records them"
        )
    if not parts.hostname:
        raise MqttUrlError(f"MQTT URL {url!r} has no host; give mqtt://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttUrlError(
            f"MQTT URL {url!r}: remove the path, query or fragment; give mqtt://HOST[:PORT]"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise MqttUrlError(f"MQTT URL {url!r}: the port is invalid ({exc})") from exc
    tls = parts.scheme == "mqtts"
    default_port = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT

    return BrokerAddress(parts.hostname, port or default_port, tls)


def _redacted(url: str) -> str:
    """Return ``url`` with any user name and password replaced, for error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]

    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class MqttSettings:
    """Everything the publisher and ``watch`` need to reach the broker.

    ``username`` and ``password`` are left out of ``repr`` so that no log
    line or traceback shows them.
    """

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    buffer_events: int = DEFAULT_BUFFER_EVENTS
    reconnect_initial_s: float = 0.25
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    flush_timeout_s: float = 3.0
    """At the end of a run, time left to publish what is still buffered."""

    @property
    def broker(self) -> str:
        return BrokerAddress(self.host, self.port, self.tls).display


def resolve_mqtt_settings(
    url: str | None,
    topology_url: str | None = None,
    *,
    username: str | None = None,
    password_env: str | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    buffer_events: int | None = None,
    topology_buffer_events: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> MqttSettings | None:
    """Combine command-line options, the topology's ``events`` section and the environment.

    The command line wins over the topology. Return None when neither names a
    broker. Raise LiveError for an invalid URL, a missing password variable or
    a buffer size below 1.
    """
    chosen = url if url is not None else topology_url
    if chosen is None:
        return None

    address = parse_mqtt_url(chosen)
    env = os.environ if environ is None else environ
    user = username if username is not None else env.get(USERNAME_ENV) or None
    password = _password(password_env, env)
    size = buffer_events if buffer_events is not None else topology_buffer_events
    size = DEFAULT_BUFFER_EVENTS if size is None else size
    if size < 1:
        raise LiveError(f"--mqtt-buffer {size}: give a number of events of at least 1")
    if ca_file is not None and not ca_file.is_file():
        raise LiveError(f"--mqtt-ca-file {ca_file}: file not found; give a PEM file of CA certificates")

    return MqttSettings(
        host=address.host, port=address.port, tls=address.tls or tls or ca_file is not None,
        ca_file=ca_file, username=user, password=password, buffer_events=size,
    )


def _password(password_env: str | None, env: Mapping[str, str]) -> str | None:
    if password_env is None:
        return env.get(PASSWORD_ENV) or None
    value = env.get(password_env)
    if value is None:
        raise LiveError(
            f"--mqtt-password-env {password_env}: the environment variable is not set; "
            "export it with the broker password, or leave the option out"
        )

    return value
