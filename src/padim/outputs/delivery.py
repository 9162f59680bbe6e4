"""Delivering spooled verdicts to one destination, in order, in a thread of its own.

A :class:`Delivery` reads the spool after its destination's cursor (:mod:`padim.outputs.spool`), hands
each message to a sender (:class:`padim.outputs.mqtt.MqttSender`,
:class:`padim.outputs.webhook.WebhookSender`) and moves the cursor once the sender says it was
delivered. When the destination is down it says so once (``spooling verdicts in ... until it is
back``), tries the same message again after a growing pause (:data:`RETRY_MIN` to
:data:`RETRY_MAX` seconds), and says when it is back. Judging never waits on it: images are judged
and spooled whatever the destinations do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from padim.outputs.spool import Spool

#: Seconds before the first retry of a message that could not be delivered; doubled up to RETRY_MAX.
RETRY_MIN, RETRY_MAX = 0.5, 5.0


class Delivery:
    """Sends ``spool``'s messages to ``sender`` in a thread, from its cursor on, retrying until each is delivered.

    Args:
        spool: the spool (a destination named ``sender.name``).
        sender: has ``name``, ``where`` and ``send(seq, payload) -> None | reason``; ``close()``.
        say: prints one message line (starting and stopping to spool).

    Attributes:
        delivered: messages delivered by this run. spooling: whether the destination is down now.
    """

    def __init__(self, spool: Spool, sender: Any, say: Callable[[str], None]) -> None:
        self.spool, self.sender, self.say = spool, sender, say
        self.delivered, self.spooling = 0, False
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"padim-{sender.name}", daemon=True)

    def start(self) -> Delivery:
        self._thread.start()
        return self

    @property
    def waiting(self) -> int:
        """Messages spooled for this destination and not delivered yet."""
        return self.spool.waiting(self.sender.name)

    def _run(self) -> None:
        reader = self.spool.reader(self.sender.name)
        pause = RETRY_MIN
        try:
            while not self._done():
                item = reader.peek(timeout=0.2)
                if item is None:
                    continue
                seq, payload = item
                try:
                    reason = self.sender.send(seq, payload)
                except Exception as error:  # a sender's bug must not stop deliveries silently: say it, retry
                    reason = f"{type(error).__name__}: {error}"
                if reason is None:
                    reader.commit(seq)
                    self.delivered += 1
                    if self.spooling:
                        self.spooling = False
                        self.say(f"{self.sender.where}: back; delivering the spooled verdicts in order "
                                 f"({self.waiting} left)")  # fmt: skip
                    pause = RETRY_MIN
                    continue
                if not self.spooling:
                    self.spooling = True
                    self.say(f"{self.sender.where}: {reason}; spooling verdicts in {self.spool.folder} until it is "
                             f"back ({self.waiting} waiting)")  # fmt: skip
                self._closing.wait(pause)
                pause = min(2 * pause, RETRY_MAX)
        finally:
            reader.close()

    def _done(self) -> bool:
        """Closing: stop when all is delivered, when the destination is down, or at the deadline."""
        if not self._closing.is_set():
            return False
        return self.waiting == 0 or self.spooling or time.monotonic() > self._deadline

    def close(self, grace: float = 5.0) -> None:
        """Deliver what is spooled for up to ``grace`` seconds (not while the destination is down), then stop."""
        self._deadline = time.monotonic() + grace
        self._closing.set()
        self._thread.join(grace + 15.0)  # a send in progress may take its timeout
        self.sender.close()
