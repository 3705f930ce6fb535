"""The live event stream: every event of a run published to MQTT, and ``rehearse watch``.

Modules: :mod:`.settings` (broker URL, credentials, TLS), :mod:`.publisher`
(the recorder listener that publishes with aiomqtt) and :mod:`.watch` (the
live table). This package imports only the settings eagerly, because the
topology model validates broker URLs with them; import the publisher and the
watch from their modules.

Exceptions::

    SimulatorError
    +-- LiveError            settings, broker or watch problem
        +-- MqttUrlError     an invalid broker URL (also a ValueError)
"""

from simulator.live.settings import (
    DEFAULT_BUFFER_EVENTS,
    PASSWORD_ENV,
    TOPIC_ROOT,
    USERNAME_ENV,
    BrokerAddress,
    LiveError,
    MqttSettings,
    MqttUrlError,
    parse_mqtt_url,
    resolve_mqtt_settings,
)

__all__ = [
    "DEFAULT_BUFFER_EVENTS",
    "PASSWORD_ENV",
    "TOPIC_ROOT",
    "USERNAME_ENV",
    "BrokerAddress",
    "LiveError",
    "MqttSettings",
    "MqttUrlError",
    "parse_mqtt_url",
    "resolve_mqtt_settings",
]
