"""The MQTT side: one paho-mqtt 2.x client (MQTT 5 by default, 3.1.1 selectable) and the publisher thread that
moves committed outbox rows to the broker.

paho's callbacks run on its network thread under its internal lock, so they only flip events and queue
(mid, reason) pairs; all disk work (deleting acknowledged rows, dead-lettering refused ones) happens in the
publisher thread.
"""
import logging
import queue
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from ..contract import payloads, topics
from ..contract.client import make_client, paho
from .config import MqttConfig
from .outbox import Outbox
from .staging import GROUP_DELAY

log = logging.getLogger(__name__)


class MqttLink(object):
    def __init__(self, cfg: MqttConfig, device_id: str, password: Optional[str] = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.connected = threading.Event()
        self.acks: "queue.Queue[Tuple[int, int, str, float]]" = queue.Queue()  # mid, failed, reason, when
        self.generation = 0  # bumped on every (re)connect: in-flight bookkeeping starts over
        self.connects = 0
        self.last_error: Optional[str] = None
        self.kick = threading.Event()  # wakes the publisher: a commit, a refusal, an ack while it waits for room
        self.wake_on_ack = True  # the publisher clears it while its in-flight window has room (acks then wait for
        # its next look, at most ACK_DELAY later, instead of waking it once per message)
        self.subscriptions: Dict[str, int] = {}  # topic -> QoS, (re)subscribed on every connect
        self.messages: "queue.Queue[Tuple[str, bytes]]" = queue.Queue(maxsize=64)  # read by the main loop
        self.on_message: Optional[Callable[[], None]] = None  # called after a message was queued (wakes that loop)
        self._stopping = False
        self._mqtt = paho("The agent's MQTT link", "agent")
        self.client = make_client(cfg.settings(device_id, password))  # TLS, credentials, backoff: as doctor tests
        self.status_topic = topics.topic(cfg.topic_prefix, device_id, topics.STATUS)
        self.client.will_set(self.status_topic, payloads.encode(payloads.status("offline", device_id)), qos=1,
                             retain=True)
        self.client.max_inflight_messages_set(cfg.inflight)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message

    # -- paho callbacks (network thread, paho's lock held: no disk work) --------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = "broker refused the connection: %s" % reason_code
            log.error("MQTT %s", self.last_error)
            return
        self.generation += 1
        self.connects += 1
        self.last_error = None
        client.publish(self.status_topic, payloads.encode(payloads.status("online", self.device_id)), qos=1,
                       retain=True)
        for topic, qos in self.subscriptions.items():  # clean session: subscribe again; retained ones come back
            client.subscribe(topic, qos=qos)
        self.connected.set()
        self.kick.set()
        log.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        self.acks.put((mid, 1 if failed else 0, str(reason_code) if failed else "", time.time()))
        if failed or self.wake_on_ack:
            self.kick.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            self.messages.put_nowait((message.topic, bytes(message.payload)))
        except queue.Full:
            log.warning("dropped a message on %s: the agent has %d unread", message.topic, self.messages.qsize())
        if self.on_message is not None:
            self.on_message()

    # -- control ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect once in the foreground, so that the reason of a failure (refused, TLS verification, DNS) is
        logged; then paho's thread keeps (re)connecting with capped backoff either way."""
        try:
            self.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket errors are OSErrors
            self.last_error = "cannot connect to %s:%d: %s" % (self.cfg.host, self.cfg.port, exc)
            log.error("MQTT %s; retrying in the background", self.last_error)
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def _on_connect_fail(self, client, userdata) -> None:
        log.warning("MQTT connection to %s:%d failed; retrying with backoff", self.cfg.host, self.cfg.port)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Optional[int]:
        """The message id, or None when it could not be handed to the socket (not connected)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def stop(self, final_state: str = "stopped", timeout: float = 3.0) -> None:
        """Publish the final retained status (when connected), disconnect cleanly (no Last Will), stop the loop."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, payloads.encode(payloads.status(final_state,
                                                                                         self.device_id)),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("final status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()


IDLE_POLL = 1.0  # s between looks when nothing wakes the publisher (resends, refused rows): new rows and acks wake it
ACK_BATCH = 32  # acknowledged rows are deleted together once this many wait,
ACK_DELAY = 0.1  # or once the oldest has waited this long (s); a delete lost to a crash only means a resend
EARLY_WAKE = GROUP_DELAY / 4  # s: staged messages handed off at shorter intervals: their acks need not wake us


class Publisher(object):
    """Moves committed rows, then staged messages not committed yet, from the outbox to the broker; deletes rows on
    PUBACK (in groups; a staged message acknowledged first is never written); dead-letters refused ones."""

    def __init__(self, link: MqttLink, outbox: Outbox, inflight: int = 20, resend_after: float = 30.0) -> None:
        self.link, self.outbox = link, outbox
        self.max_inflight = inflight
        self.resend_after = resend_after
        self._inflight: Dict[int, Tuple[int, float, Optional[float], str]] = {}  # mid -> row id, sent, captured, kind
        self._generation = -1
        self.capture_to_publish_ms: Deque[float] = deque(maxlen=2000)  # capture -> handed to the MQTT connection
        self.capture_to_ack_ms: Deque[float] = deque(maxlen=2000)  # capture -> the broker's PUBACK
        self.commit_to_publish_ms: Deque[float] = deque(maxlen=2000)  # committed (or staged) -> handed to paho
        self.published = 0
        self.failed: Optional[BaseException] = None  # an unexpected error ended the thread: the agent must exit
        self._acked: List[Tuple[int, Optional[float], str, float]] = []  # row id, captured, kind, acked at
        self._acked_since = 0.0  # monotonic time of the oldest in ``_acked``
        self._last_fresh = -1e9  # monotonic time of the last hand-off of staged messages
        self._early_wake = True  # their acks wake this thread (frames come slower than EARLY_WAKE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.link.kick.set()
        self._thread.join(timeout)

    def inflight(self) -> int:
        return len(self._inflight)

    def wake(self) -> None:
        """Something was committed: publish it now rather than at the next poll."""
        self.link.kick.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.link.kick.wait(self._wait())
                self.link.kick.clear()
                self.step()
                if len(self._inflight) < self.max_inflight and not (self._early_wake and self._early_inflight()):
                    self.link.wake_on_ack = False  # room left, no ack needed before the next frame: acks wait
            self._collect_acks()
            self._flush_acks(force=True)  # acknowledged rows left behind would be sent again at the next start
        except Exception as exc:  # e.g. the outbox's disk failed: fail loudly, the main loop stops the agent
            log.exception("MQTT publisher failed")
            self.failed = exc

    def _early_inflight(self) -> bool:
        """A message sent before its commit is in flight (its ack must reach the outbox before the commit is due,
        agent/staging.py: acks wake this thread unless the next frame's hand-off comes sooner, ``_early_wake``)."""
        return any(entry[0] < 0 for entry in self._inflight.values())

    def _wait(self) -> float:
        """Until the next look without a wake: acknowledged rows waiting to be deleted, messages in flight whose
        acks do not wake this thread (``ACK_DELAY``), else the idle poll."""
        if self.link.wake_on_ack and not self.link.acks.empty():  # a full window, and acks came before the flag
            return 0.0
        if self._acked:
            return max(0.0, min(IDLE_POLL, self._acked_since + ACK_DELAY - time.monotonic()))
        return ACK_DELAY if self._inflight else IDLE_POLL

    def step(self) -> None:
        self._collect_acks()
        self._flush_acks()
        if not self.link.connected.is_set():
            return
        if self._generation != self.link.generation:  # new connection: whatever was in flight is sent again
            self._generation = self.link.generation
            self._inflight.clear()
        now = time.time()
        stale = [mid for mid, (_, sent, _, _) in self._inflight.items() if now - sent > self.resend_after]
        for mid in stale:
            del self._inflight[mid]
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        busy = {row_id for row_id, _, _, _ in self._inflight.values()} | {a[0] for a in self._acked}
        rows = self.outbox.pending(room, exclude=busy)
        if len(rows) < room:  # committed rows first, then what is staged (newer), sent before its commit
            fresh = self.outbox.fresh(room - len(rows))
            if fresh:  # frames closer than EARLY_WAKE: the next frame's hand-off collects the acks in time
                mono = time.monotonic()
                self._early_wake = mono - self._last_fresh >= EARLY_WAKE
                self._last_fresh = mono
            rows += fresh
        for row in rows:
            if len(self._inflight) + 1 >= self.max_inflight or (row.id < 0 and self._early_wake):
                self.link.wake_on_ack = True  # set before the message that fills the window (or whose ack must
                # come back before the next frame): its ack wakes us
            try:
                mid = self.link.publish(row.topic, row.payload, row.qos, row.retain)
            except (ValueError, TypeError, UnicodeError) as exc:  # paho refuses it for good (topic, size): a row
                self.outbox.dead_letter(row.id, "the MQTT client refuses it: %s" % exc)  # that can never leave
                continue  # must not stop the rest, at this start or the next
            if mid is None:
                return
            now = time.time()
            self._inflight[mid] = (row.id, now, row.captured, row.kind)
            self.published += 1
            if row.captured is not None and row.kind == "result":
                self.capture_to_publish_ms.append(1000.0 * (now - row.captured))
                if row.created is not None:
                    self.commit_to_publish_ms.append(1000.0 * (now - row.created))

    def _collect_acks(self) -> None:
        """Every queued ack: a refusal is recorded at once, a success waits to be deleted with others."""
        while True:
            try:
                mid, failed, reason, at = self.link.acks.get_nowait()
            except queue.Empty:
                return
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            row_id, _, captured, kind = entry
            if failed:
                self.outbox.refused(row_id, reason)
                continue
            if row_id < 0:  # sent before its commit: it leaves the staged group now, is never written
                self.outbox.unstage(row_id)
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append((row_id, captured, kind, at))

    def _flush_acks(self, force: bool = False) -> None:
        """Delete the acknowledged rows in one transaction once ``ACK_BATCH`` wait or the oldest has waited
        ``ACK_DELAY``: one delete per message cost the agent more CPU than the rest of publishing it."""
        if not self._acked or not (force or len(self._acked) >= ACK_BATCH
                                   or time.monotonic() - self._acked_since >= ACK_DELAY):
            return
        acked, self._acked = self._acked, []
        deleted = set(self.outbox.ack_many([a[0] for a in acked]))
        for row_id, captured, kind, at in acked:
            if row_id in deleted and captured is not None and kind == "result":
                self.capture_to_ack_ms.append(1000.0 * (at - captured))
