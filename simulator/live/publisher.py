"""Publish every recorded event to an MQTT broker while the run goes on.

:class:`MqttPublisher` is a :class:`~simulator.recording.recorder.Recorder`
listener. Recorder.emit calls it from any thread, after the event is on
disk. The listener only serialises the event and appends it to a bounded
buffer, so a slow or absent broker never holds up a node, a link or the
timeline. When the buffer is full the oldest event is dropped and counted.
``events.jsonl`` stays complete whatever happens to the broker.

A task on the run's asyncio loop connects with aiomqtt and publishes the
buffer in order, QoS 1, to ``rehearsal/<run id>/<node, link or "run">/<kind>``.
It also keeps a retained status message on ``rehearsal/<run id>/status``:
``running`` with the counts so far, at most once a second, and ``finished``
with the result at the end. A lost or refused connection is retried with an
exponential backoff capped at :attr:`MqttSettings.reconnect_max_s`; events
whose publication failed go back to the front of the buffer, so an event
can arrive twice (QoS 1 is "at least once") but is never skipped unless the
buffer overflows.

The connection carries a retained will on the status topic with state
``disconnected``: when the publisher goes away without a clean disconnect,
the broker tells the watchers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt

from simulator.live.settings import TOPIC_ROOT, MqttSettings
from simulator.recording.recorder import Recorder

STATUS_INTERVAL_S = 1.0
"""Minimum time between two ``running`` status messages."""

BATCH_SIZE = 200
"""Events published concurrently before waiting for their PUBACKs."""

STOP_GRACE_S = 2.0
"""Time left to a cancelled publisher task to close its connection."""

StatusSource = Callable[[], dict[str, Any]]

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


def topic_level(text: str) -> str:
    """Return ``text`` usable as one topic level: no ``/``, ``+``, ``#`` or NUL, not empty."""
    cleaned = "".join("_" if c in "/+#\0" else c for c in text)

    return cleaned or "_"


def event_topic(run_id: str, event: dict[str, Any]) -> str:
    """Return the topic of one event: the node, else the link, else ``run``, then its kind."""
    scope = event.get("node") or event.get("link") or "run"
    kind = event.get("kind") or "event"

    return "/".join((TOPIC_ROOT, topic_level(run_id), topic_level(str(scope)), topic_level(str(kind))))


def status_topic(run_id: str) -> str:
    return f"{TOPIC_ROOT}/{topic_level(run_id)}/status"


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    seq: int


@dataclass(frozen=True)
class MqttCounts:
    """Counts of the events offered to the publisher, as summary.json records them.

    ``published`` + ``dropped`` equals the events offered, because every
    event still buffered when the publisher stops counts as dropped.
    ``reconnects`` counts connection attempts after the first one.
    """

    broker: str
    published: int
    dropped: int
    reconnects: int

    def as_record(self) -> dict[str, Any]:
        return {"broker": self.broker, "published": self.published, "dropped": self.dropped,
                "reconnects": self.reconnects}


class _Connection:
    """One connected client, and a task that ends with MqttError when the broker drops it.

    aiomqtt fails a pending publication only at its timeout; waiting on the
    message iterator as well notices a closed connection at once.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost: asyncio.Task[None] = asyncio.create_task(
            self._wait_until_lost(), name="mqtt connection watch"
        )

    async def _wait_until_lost(self) -> None:
        # The publisher subscribes to nothing, so the iterator only ends by raising.
        async for _ in self.client.messages:
            pass

    async def unless_lost(self, awaitable: Awaitable[T], timeout_s: float | None = None) -> T | None:
        """Await ``awaitable``; raise MqttError as soon as the connection drops.

        Return None when ``timeout_s`` passes first.
        """
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.lost}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait({task})
        if self.lost in done:
            error = self.lost.exception()
            raise error if isinstance(error, aiomqtt.MqttError) else aiomqtt.MqttError(
                "the connection to the broker was lost")
        return None

    def close(self) -> None:
        if self.lost.done() and not self.lost.cancelled():
            self.lost.exception()  # Marks the error as seen; the caller already acted on it.
        self.lost.cancel()


class MqttPublisher:
    """Publish the events of run ``run_id`` to the broker of ``settings``.

    Call :meth:`attach` before the first event, :meth:`start` on the run's
    loop, and :meth:`stop` once, with the final status, after the last event.
    ``status_source`` returns the counts for the ``running`` status; it is
    called on the loop.
    """

    def __init__(self, settings: MqttSettings, run_id: str, status_source: StatusSource) -> None:
        self.settings = settings
        self.run_id = run_id
        self._status_source = status_source
        self._recorder: Recorder | None = None
        self._lock = threading.Lock()
        self._buffer: deque[_Message] = deque()
        self._offered = 0
        self._published = 0
        self._dropped = 0
        self._attempts = 0
        self._accepting = True
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._final_status: dict[str, Any] | None = None
        self._last_status_mono = 0.0
        self._last_status_offered = -1
        self._connected_before = False
        self._reported_failure = False

    # The listener side: any thread.

    def attach(self, recorder: Recorder) -> None:
        """Listen to ``recorder``; the publisher records its connection changes there too."""
        self._recorder = recorder
        recorder.add_listener(self.offer)

    def offer(self, event: dict[str, Any]) -> None:
        """Buffer one event for publication; drop the oldest when the buffer is full."""
        seq = event.get("seq")
        message = _Message(event_topic(self.run_id, event),
                           json.dumps(event, default=str).encode("utf-8"),
                           seq if isinstance(seq, int) else 0)
        with self._lock:
            self._offered += 1
            if not self._accepting:
                self._dropped += 1
                return
            if len(self._buffer) >= self.settings.buffer_events:
                self._buffer.popleft()
                self._dropped += 1
            self._insert_in_order(message)
            notify = not self._wake_pending
            self._wake_pending = True
        if notify:
            self._notify()

    def _insert_in_order(self, message: _Message) -> None:
        # The recorder calls listeners after releasing its lock, so two threads
        # can deliver events out of seq order; they are rarely more than one apart.
        index = len(self._buffer)
        while index > 0 and self._buffer[index - 1].seq > message.seq:
            index -= 1
        self._buffer.insert(index, message)

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            # The loop has closed: stop() already counted the rest as dropped.
            pass

    def counts(self) -> MqttCounts:
        with self._lock:
            return MqttCounts(self.settings.broker, self._published, self._dropped,
                              max(self._attempts - 1, 0))

    # The loop side.

    def start(self) -> None:
        """Start the publishing task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"mqtt publisher {self.run_id}")
        self._notify()

    async def stop(self, final_status: dict[str, Any]) -> MqttCounts:
        """Publish what is buffered and the final status, within the flush timeout; return counts.

        Events still buffered when the timeout ends, or when the broker is
        unreachable, are counted as dropped.
        """
        assert self._task is not None, "start() was not called"
        assert self._closing is not None
        assert self._wake is not None
        self._final_status = final_status
        self._closing.set()
        self._wake.set()
        done, _ = await asyncio.wait([self._task], timeout=self.settings.flush_timeout_s)
        if not done:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_GRACE_S)
        with self._lock:
            self._accepting = False
            self._dropped += len(self._buffer)
            self._buffer.clear()

        return self.counts()

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOGGER.exception("MQTT publisher stopped")
            self._record("mqtt.publisher_failed", error=f"{type(exc).__name__}: {exc}")

    async def _connect_loop(self) -> None:
        assert self._closing is not None
        delay_s = self.settings.reconnect_initial_s
        while True:
            with self._lock:
                self._attempts += 1
            try:
                async with self._client() as client:
                    self._note_connected()
                    delay_s = self.settings.reconnect_initial_s
                    await self._pump(client)
                    return
            except aiomqtt.MqttError as exc:
                self._note_failure(exc, delay_s)
            if self._closing.is_set():
                # One attempt after stop() at most: the run is over and must not wait.
                return
            await self._sleep_unless_closing(delay_s)
            delay_s = min(delay_s * 2, self.settings.reconnect_max_s)

    def _client(self) -> aiomqtt.Client:
        settings = self.settings
        tls_params = None
        if settings.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(settings.ca_file) if settings.ca_file is not None else None
            )
        will = aiomqtt.Will(status_topic(self.run_id), self._status_payload("disconnected"),
                            qos=1, retain=True)
        client = aiomqtt.Client(
            settings.host, settings.port, username=settings.username,
            password=settings.password, identifier=f"rehearse-{self.run_id}",
            timeout=settings.connect_timeout_s, tls_params=tls_params, will=will,
        )
        # aiomqtt warns past 10 pending calls; a batch has more by design.
        client.pending_calls_threshold = BATCH_SIZE + 10

        return client

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish until stop() and an empty buffer; raise MqttError when the connection fails."""
        assert self._closing is not None
        connection = _Connection(client)
        try:
            await self._publish_status(connection, "running")
            while True:
                batch = self._take_batch()
                if batch:
                    await self._publish_batch(connection, batch)
                    await self._maybe_publish_status(connection)
                    continue
                if self._closing.is_set():
                    await self._publish_status(connection, "finished")
                    return
                await self._maybe_publish_status(connection)
                await self._wait_for_work(connection)
        finally:
            connection.close()

    def _take_batch(self) -> list[_Message]:
        with self._lock:
            count = min(BATCH_SIZE, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    async def _publish_batch(self, connection: _Connection, batch: list[_Message]) -> None:
        acknowledged = [False] * len(batch)

        async def publish(index: int, message: _Message) -> None:
            await connection.client.publish(message.topic, message.payload, qos=1,
                                            timeout=self.settings.publish_timeout_s)
            acknowledged[index] = True

        # gather starts the publications in list order, so the broker gets them in order.
        publications = asyncio.gather(*(publish(i, m) for i, m in enumerate(batch)),
                                      return_exceptions=True)
        try:
            results = await connection.unless_lost(publications)
        finally:
            failed = [m for m, done in zip(batch, acknowledged) if not done]
            with self._lock:
                self._published += len(batch) - len(failed)
            self._requeue(failed)
        errors = [r for r in results or [] if isinstance(r, BaseException)]
        if not errors:
            return

        if isinstance(errors[0], aiomqtt.MqttError):
            raise errors[0]
        raise aiomqtt.MqttError(f"publishing failed: {type(errors[0]).__name__}: {errors[0]}")

    def _requeue(self, failed: list[_Message]) -> None:
        """Put failed messages back in front; when the buffer is full, drop the oldest of them."""
        if not failed:
            return
        with self._lock:
            room = max(self.settings.buffer_events - len(self._buffer), 0)
            kept = failed[len(failed) - room:] if room < len(failed) else failed
            self._dropped += len(failed) - len(kept)
            self._buffer.extendleft(reversed(kept))

    async def _wait_for_work(self, connection: _Connection) -> None:
        """Wait for a new event, stop() or the status interval; raise MqttError if the connection drops."""
        assert self._wake is not None
        self._wake.clear()
        with self._lock:
            self._wake_pending = False
            if self._buffer:
                return
        await connection.unless_lost(self._wake.wait(), timeout_s=STATUS_INTERVAL_S)

    async def _sleep_unless_closing(self, delay_s: float) -> None:
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=delay_s)
        except TimeoutError:
            pass

    async def _maybe_publish_status(self, connection: _Connection) -> None:
        now = time.monotonic()
        with self._lock:
            changed = self._offered != self._last_status_offered
        if changed and now - self._last_status_mono >= STATUS_INTERVAL_S:
            await self._publish_status(connection, "running")

    async def _publish_status(self, connection: _Connection, state: str) -> None:
        with self._lock:
            self._last_status_offered = self._offered
        self._last_status_mono = time.monotonic()
        await connection.unless_lost(connection.client.publish(
            status_topic(self.run_id), self._status_payload(state), qos=1, retain=True,
            timeout=self.settings.publish_timeout_s,
        ))

    def _status_payload(self, state: str) -> bytes:
        status: dict[str, Any] = {"run_id": self.run_id, "state": state}
        if state == "finished" and self._final_status is not None:
            status.update(self._final_status)
        elif state == "running":
            status.update(self._status_source())
        counts = self.counts()
        status["mqtt"] = {"published": counts.published, "dropped": counts.dropped}
        status["t_wall"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        return json.dumps(status, default=str).encode("utf-8")

    def _note_connected(self) -> None:
        kind = "mqtt.reconnected" if self._connected_before else "mqtt.connected"
        self._connected_before = True
        self._reported_failure = False
        self._record(kind, broker=self.settings.broker, tls=self.settings.tls,
                     reconnects=self.counts().reconnects)

    def _note_failure(self, exc: aiomqtt.MqttError, delay_s: float) -> None:
        # Record the first failure of a series only: a broker down for a whole
        # run would otherwise add an event per attempt.
        if self._reported_failure:
            return
        self._reported_failure = True
        self._record("mqtt.connection_lost" if self._connected_before else "mqtt.connect_failed",
                     broker=self.settings.broker, error=str(exc), retry_in_s=delay_s)

    def _record(self, kind: str, **fields: Any) -> None:
        if self._recorder is not None:
            self._recorder.emit(kind, **fields)
