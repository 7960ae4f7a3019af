"""The platform's publisher of controller commands (`POST /api/v1/apps/{name}/commands`).

Commands for every site go to the CLOUD site's broker: the bridge of each edge site
subscribes there to `sites/<edge>/#` and carries them down (QoS 1, durable outbox), so
the platform needs one connection only, however many sites there are.

One long-lived MQTT connection, opened by the first command (a platform that nobody
commands never connects), reopened when the cloud broker's address changes. `publish`
returns once the broker acknowledged every message (PUBACK), so an answer of 200 means
the command is in the message service; anything else raises `BrokerUnavailable`.
"""

from __future__ import annotations

import threading

from edgecloud.application import topics
from edgecloud.application.messages import ControllerCommand
from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.mqtt import MqttClient

log = get_logger("platform.commands")


class BrokerUnavailable(UserError):
    """The cloud broker did not accept a command (down, unreachable or not answering)."""

    exit_code = 1


class CommandPublisher:
    """Publishes `ControllerCommand`s on `topics.commands(site, app)` via the cloud broker.

        publisher = CommandPublisher()
        publisher.publish("mqtt://127.0.0.1:1883", "relay-demo", ["ec-1"],
                          ControllerCommand(op="set", args={"every": 2}))
        publisher.close()

    Thread-safe (API routes run on a thread pool): one publish at a time, which also
    makes the broker's acknowledgement of *this* command what `publish` waits for.
    """

    def __init__(self, connect_timeout: float = 3.0, ack_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._lock = threading.Lock()
        self._client: MqttClient | None = None

    def publish(self, broker_url: str, app: str, sites: list[str],
                command: ControllerCommand) -> None:
        """Publish `command` for `app` at every site of `sites` (QoS 1) and wait until the
        broker at `broker_url` acknowledged them all; raise BrokerUnavailable if it does
        not within the timeouts."""
        body = command.model_dump(mode="json")
        with self._lock:
            client = self._connected(broker_url)
            for site in sites:
                if not client.publish(topics.commands(site, app), body, qos=1):
                    self._drop()
                    raise BrokerUnavailable(f"the connection to the cloud broker at "
                                            f"{broker_url} refused the command (queue full); "
                                            "send it again")
            if not client.flush(self.ack_timeout):
                # Forget what is still queued, so it is not sent again after a reconnect
                # behind the caller's retry. What already reached the broker's socket may
                # still be delivered: hence "may not have been delivered".
                self._drop()
                raise BrokerUnavailable(
                    f"the cloud broker at {broker_url} did not acknowledge the command "
                    f"within {self.ack_timeout:g} s, so it may not have been delivered; "
                    "check that the broker runs (`edgecloud status`) and send it again")
        log.info("command published", app=app, op=command.op, component=command.component,
                 sites=",".join(sites))

    def _connected(self, broker_url: str) -> MqttClient:
        """The connection to `broker_url`, opened (or reopened) if it is not up."""
        client = self._client
        if client is not None and (client.url != broker_url or not client.connected):
            # A moved broker, or a connection that dropped: start afresh rather than
            # queue a command behind paho's reconnect back-off.
            self._drop()
            client = None
        if client is None:
            client = MqttClient(broker_url, src="platform")
            try:
                client.connect(self.connect_timeout)
            except UserError as exc:
                raise BrokerUnavailable(f"cannot publish the command: {exc}") from None
            self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close(flush_timeout=0)
            self._client = None

    def close(self) -> None:
        """Disconnect (the platform is stopping)."""
        with self._lock:
            self._drop()
