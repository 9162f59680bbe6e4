"""Publishing verdicts to an MQTT broker with QoS 1 (paho-mqtt): ``--mqtt mqtt://HOST[:PORT]/TOPIC``.

:func:`parse_mqtt_url` checks the URL once, at start (a bad one is an :class:`OptionError` naming
``--mqtt``). :class:`MqttSender` keeps one connection in paho's network thread, reconnecting by
itself, and sends one message at a time: :meth:`MqttSender.send` returns once the broker has
acknowledged it (PUBACK), or says why not. A message published as the connection drops stays in
paho's session and is sent again on reconnection (QoS 1: at least once); the sender then waits on
it rather than publishing it a second time. Messages that wait longer wait on disk, in the spool
(:mod:`padim.outputs.spool`), not here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from padim.errors import OptionError

#: Seconds :meth:`MqttSender.send` waits for the broker's acknowledgement.
ACK_TIMEOUT = 10.0


@dataclass(frozen=True)
class MqttTarget:
    """Where ``--mqtt`` publishes: broker, port, topic, TLS (``mqtts://``) and credentials from the URL."""

    host: str
    port: int
    topic: str
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:
        """``mqtt://HOST:PORT/TOPIC`` without credentials, for messages."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """The broker and topic of an ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC`` URL (``mqtts://``: TLS, port 8883).

    Raises:
        OptionError: one line naming ``--mqtt``, the URL (password hidden) and what is wrong.

    >>> parse_mqtt_url("mqtt://127.0.0.1:1884/line/4/verdicts").where
    'mqtt://127.0.0.1:1884/line/4/verdicts'
    >>> parse_mqtt_url("mqtt://broker")
    Traceback (most recent call last):
    ...
    padim.errors.OptionError: --mqtt mqtt://broker: expected mqtt://HOST[:PORT]/TOPIC: no topic
    """

    def bad(what: str) -> OptionError:
        shown = url if parts.password is None else url.replace(f":{parts.password}@", ":***@")
        return OptionError(f"--mqtt {shown}: expected mqtt://HOST[:PORT]/TOPIC: {what}")

    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise bad("the scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number in 1..65535") from None
    if not parts.hostname:
        raise bad("no host")
    topic = unquote(parts.path[1:])
    if not topic:
        raise bad("no topic")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise bad("a topic to publish to has no wildcards (+, #)")
    if parts.query or parts.fragment:
        raise bad("unexpected ?query or #fragment")
    tls = parts.scheme == "mqtts"
    user = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    return MqttTarget(parts.hostname, port or (8883 if tls else 1883), topic, tls, user, password)


class MqttSender:
    """Publishes messages to one broker and topic with QoS 1, one at a time, reconnecting by itself.

    Args:
        target: from :func:`parse_mqtt_url`.
        client_id: the MQTT client id ("" lets paho choose one).
    """

    name = "mqtt"

    def __init__(self, target: MqttTarget, client_id: str = "") -> None:
        import paho.mqtt.client as mqtt

        self.target, self.where = target, target.where
        self._changed = threading.Condition()
        self._connected, self._acked = False, set()
        self.reason = f"cannot connect to {target.host}:{target.port}"
        self._pending: tuple[int, int] | None = None  # (seq, mid) published, not yet acknowledged
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if target.username is not None:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            client.tls_set()
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail, client.on_publish = self._on_connect_fail, self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.connect_async(target.host, target.port, keepalive=30)
        client.loop_start()
        self.client = client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._changed:
            self._connected = not reason_code.is_failure
            if reason_code.is_failure:
                self.reason = f"the broker refused the connection ({reason_code})"
            self._changed.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._changed:
            self._connected = False
            self.reason = f"disconnected from {self.target.host}:{self.target.port} ({reason_code})"
            self._changed.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        with self._changed:
            self.reason = f"cannot connect to {self.target.host}:{self.target.port}"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._changed:
            self._acked.add(mid)
            self._changed.notify_all()

    def send(self, seq: int, payload: bytes, timeout: float = ACK_TIMEOUT) -> str | None:
        """Publish message ``seq`` (or keep waiting on it, if it was published already); None once acknowledged.

        Returns:
            None when the broker acknowledged it, else why not (not connected, no acknowledgement in time).
        """
        if self._pending is None or self._pending[0] != seq:
            with self._changed:
                if not self._connected:
                    return self.reason
            info = self.client.publish(self.target.topic, payload, qos=1)
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (kept by paho, sent on reconnection)
                return f"cannot publish (paho error {int(info.rc)})"
            self._pending = (seq, info.mid)
        mid = self._pending[1]
        with self._changed:
            self._changed.wait_for(lambda: mid in self._acked or not self._connected, timeout)
            if mid in self._acked:
                self._acked.discard(mid)
                self._pending = None
                return None
            return self.reason if not self._connected else f"no acknowledgement within {timeout:g} s"

    def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        self.client.disconnect()
        self.client.loop_stop()
