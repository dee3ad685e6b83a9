"""`edgesight collect`: every device's samples -> one deduplicated dataset (docs/collect.md).

An MQTT 5 client with a persistent session (no clean start, a session expiry) and a shared subscription
``$share/<group>/<prefix>/+/+/sample``: several collectors in one group split the load, and a collector that
restarts gets what was sent meanwhile. Messages are acknowledged by hand (paho's ``manual_ack``) only after they
are stored or filed as rejected, so a collector killed at any moment loses nothing (``store.py``).

Threads: paho's network thread only queues messages; the main loop validates, stores a batch, then acknowledges it.
"""
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..contract.client import CLI_FIELDS, ClientSettings, make_client
from ..contract.topics import sample_subscriptions
from ..errors import BrokerError, ConfigError, require_module
from .intake import Rejected, parse_sample
from .stores import StoreUnavailable, open_store

log = logging.getLogger(__name__)


@dataclass
class CollectOptions:
    dataset: str
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edgesight"
    group: str = "edgesight"
    share: bool = True  # False: a plain subscription (one collector; survives mosquitto restarts, see docs)
    client_id: Optional[str] = None  # default: edgesight-collect-<host name>-<group>; one per collector
    username: Optional[str] = None
    password: Optional[str] = None
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    tls: bool = False
    session_expiry: int = 7 * 86400  # seconds the broker keeps the session (and queues for it) while we are away
    keepalive: int = 30
    reconnect_max: int = 10  # seconds, paho's capped exponential backoff from 1 s
    max_bytes: int = 1 << 20
    batch: int = 64
    progress_interval: float = 5.0
    max_samples: Optional[int] = None
    idle_exit: Optional[float] = None
    connect_timeout: float = 30.0
    s3_endpoint: Optional[str] = None  # s3:// datasets: a non-AWS endpoint (MinIO, Ceph RGW, Garage, moto)

    def topics(self) -> List[str]:
        """The subscriptions: whole-frame and region samples, in the shared group unless ``share`` is off."""
        plain = sample_subscriptions(self.topic_prefix)
        return ["$share/%s/%s" % (self.group, t) for t in plain] if self.share else plain

    def settings(self, client_id: str) -> ClientSettings:
        return ClientSettings(host=self.host, port=self.port, client_id=client_id, protocol="5",
                              username=self.username, password=self.password, tls=self.tls, ca_file=self.ca_file,
                              cert_file=self.cert_file, key_file=self.key_file, keepalive=self.keepalive,
                              reconnect_min=1, reconnect_max=self.reconnect_max, manual_ack=True, fields=CLI_FIELDS)


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    first_stored: Optional[float] = None
    last_stored: Optional[float] = None


class Collector(object):
    def __init__(self, opts: CollectOptions) -> None:
        self.opts = opts
        self.client_id = opts.client_id or "edgesight-collect-%s-%s" % (socket.gethostname().split(".")[0],
                                                                        opts.group)
        require_module("PIL.Image", "edgesight collect (checking sample JPEGs)", "fleet", package="Pillow")
        self.dataset = open_store(opts.dataset, collector=self.client_id, s3_endpoint=opts.s3_endpoint)
        self.stats = Stats()
        self.inbox: "queue.Queue[Tuple[int, int, str, bytes]]" = queue.Queue()
        self.connected = threading.Event()
        self.fatal: Optional[str] = None
        self.connects = 0
        self.client = make_client(opts.settings(self.client_id), "edgesight collect", "fleet")
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = int(opts.session_expiry)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- paho callbacks: network thread, no disk work ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.fatal = "the broker refused the connection: %s" % reason_code
            return
        self.connects += 1
        log.info("connected to %s:%d as %s (session %s); subscribing to %s", self.opts.host, self.opts.port,
                 self.client_id, "resumed" if flags.session_present else "new", ", ".join(self.opts.topics()))
        client.subscribe([(t, 1) for t in self.opts.topics()])
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("disconnected (%s); reconnecting", reason_code)
        self.connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        self.inbox.put((msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> Dict[str, Any]:
        o = self.opts
        try:
            self.client.connect(o.host, o.port, keepalive=o.keepalive, clean_start=False, properties=self._props)
        except (OSError, ValueError) as exc:
            raise BrokerError("cannot connect to the broker at %s:%d: %s" % (o.host, o.port, exc))
        self.client.loop_start()
        try:
            end = time.monotonic() + o.connect_timeout
            while not self.connected.is_set() and not stop.is_set():
                if self.fatal:
                    raise ConfigError(self.fatal + " (check --username / password / TLS options)",
                                      file="%s:%d" % (o.host, o.port))
                if time.monotonic() > end:
                    raise BrokerError("no connection to %s:%d within %.0f s" % (o.host, o.port,
                                                                                o.connect_timeout))
                time.sleep(0.05)
            self._loop(stop)
        except BaseException:
            self.dataset.close()
            raise
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        try:
            return self.summary()
        finally:
            self.dataset.close()

    def _loop(self, stop: threading.Event) -> None:
        o = self.opts
        last_progress = last_msg = time.monotonic()
        last_stored = 0
        while not stop.is_set():
            batch = self._take(o.batch, 0.2)
            now = time.monotonic()
            if batch:
                self.process(batch)
                last_msg = now
            if now - last_progress >= o.progress_interval:
                rate = (self.stats.stored - last_stored) / (now - last_progress)
                log.info("stored %d (%.0f/s), duplicates %d, rejected %d, dataset %d, %s", self.stats.stored, rate,
                         self.stats.duplicates, self.stats.rejected, len(self.dataset),
                         "connected" if self.connected.is_set() else "reconnecting")
                last_progress, last_stored = now, self.stats.stored
            if o.max_samples is not None and self.stats.stored >= o.max_samples:
                break
            if o.idle_exit is not None and now - last_msg >= o.idle_exit:
                log.info("nothing received for %.0f s: done", o.idle_exit)
                break

    def _take(self, n: int, timeout: float, linger: float = 0.01) -> List[Tuple[int, int, str, bytes]]:
        """Up to ``n`` messages: waits ``timeout`` for the first, then up to ``linger`` for more. Storing a batch
        costs a few fsyncs whatever its size, so gathering the messages the broker has in flight (group commit)
        is what makes the collector fast; the broker sends more only after our acks, so the wait is short."""
        try:
            batch = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        end = time.monotonic() + linger
        while len(batch) < n:
            left = end - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def process(self, batch: List[Tuple[int, int, str, bytes]]) -> None:
        """Check, store, then acknowledge: a message is acknowledged only once it is on disk, stored or filed
        under ``_rejected/``. Nothing a payload holds can stop the collector: a message that cannot be checked or
        stored is a rejection (and acknowledged), while a disk that cannot take even the rejection stops it
        before anything is acknowledged (the broker sends the batch again)."""
        checked = []  # (sample, topic, body)
        for _, _, topic, body in batch:
            self.stats.received += 1
            try:
                sample = parse_sample(topic, body, self.opts.max_bytes, self.opts.topic_prefix)
                checked.append((sample, topic, body))
            except Rejected as exc:
                self._reject(topic, body, exc.reason)
            except Exception as exc:  # a payload must never stop the collector (one line, no traceback)
                self._reject(topic, body, "unreadable payload (%s: %s)" % (type(exc).__name__, str(exc)[:300]))
        try:
            stored, dupes = self.dataset.add_batch([c[0] for c in checked])
        except StoreUnavailable:  # the store is away for too long: stop, acknowledge nothing (sent again later)
            raise
        except Exception as exc:  # one sample may be the cause: store them one by one, reject what fails
            log.warning("storing a batch of %d failed (%s: %s): storing one by one", len(checked),
                        type(exc).__name__, exc)
            stored = dupes = 0
            for sample, topic, body in checked:
                try:
                    one, dup = self.dataset.add_batch([sample])
                except StoreUnavailable:
                    raise
                except Exception as exc1:  # the sample cannot be stored; if the disk is at fault, so is reject()
                    self._reject(topic, body, "cannot store it (%s: %s)" % (type(exc1).__name__, str(exc1)[:300]))
                    continue
                stored, dupes = stored + one, dupes + dup
        self.stats.stored += stored
        self.stats.duplicates += dupes
        if stored:
            now = time.time()
            self.stats.first_stored = self.stats.first_stored or now
            self.stats.last_stored = now
        for mid, qos, _, _ in batch:
            if qos > 0:
                self.client.ack(mid, qos)

    def _reject(self, topic: str, body: bytes, reason: str) -> None:
        name = self.dataset.reject(topic, body, reason)
        self.stats.rejected += 1
        key = reason.split(":")[0]
        self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
        log.warning("rejected a payload on %s (%s): %s", topic, name, reason)

    def summary(self) -> Dict[str, Any]:
        s = self.stats
        span = (s.last_stored - s.first_stored) if s.first_stored and s.last_stored else 0.0
        return {"dataset": self.dataset.root, "client_id": self.client_id, "received": s.received,
                "stored": s.stored, "duplicates": s.duplicates, "rejected": s.rejected,
                "rejected_reasons": dict(s.reasons), "dataset_total": self.dataset.total(),
                "by_label": dict(sorted(self.dataset.counts.items())),
                "elapsed_s": round(time.time() - s.started, 3),
                "stored_per_s": round((s.stored - 1) / span, 1) if span > 0 and s.stored > 1 else None}
