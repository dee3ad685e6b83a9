"""``edgesight deploy``: signed desired-model messages to devices, in waves, and the fleet's model states
(docs/rollout.md).

For each device a desired message (the pack's name, version, counter and file list, the archive's sha256 and
size, the URL, the expiry and the rollout policy) is signed and published retained on
``<prefix>/<device>/model/desired``. With a canary of K devices, the first K get it first; the rest get it only
after every canary reported ``active`` with its health window passed. A ``rejected`` or ``rolled_back`` canary, or
one that does not finish in time, stops the wave: the others never receive the message.
"""
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..contract import payloads, topics
from ..contract.client import CLI_FIELDS, ClientSettings, make_client
from ..contract.rollout import Archive, Desired, ModelState, RolloutPolicy, read_pack
from ..contract.signing import load_private, sign
from ..errors import BrokerError, ConfigError, RolloutError

log = logging.getLogger(__name__)
DONE, FAILED = ("active",), ("rejected", "rolled_back")


@dataclass
class Broker:
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edgesight"
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    connect_timeout: float = 15.0


@dataclass
class DeployOptions:
    pack: str
    url: str
    broker: Broker
    devices: List[str] = field(default_factory=list)
    all_online: bool = False
    key: Optional[str] = None  # None: unsigned (devices must allow it)
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    canary: int = 0
    wait: bool = True
    timeout: float = 900.0  # seconds each wave may take
    discover_seconds: float = 2.0


class FleetLink(object):
    """An MQTT client that keeps the latest retained ``model/state`` and ``status`` of every device."""

    def __init__(self, b: Broker) -> None:
        self.b = b
        self.states: Dict[str, ModelState] = {}
        self.status: Dict[str, str] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = make_client(ClientSettings(
            host=b.host, port=b.port, client_id="edgesight-deploy-%d" % (time.time() * 1000 % 1e9), protocol="5",
            username=b.username, password=b.password, tls=b.tls, ca_file=b.ca_file, cert_file=b.cert_file,
            key_file=b.key_file, fields=CLI_FIELDS), "edgesight deploy", "fleet")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        prefix = self.b.topic_prefix
        client.subscribe([("%s/+/%s" % (prefix, "/".join(topics.MODEL_STATE)), 1),
                          ("%s/+/%s" % (prefix, topics.STATUS), 1)])
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        try:
            body = json.loads(bytes(msg.payload).decode("utf-8")) if msg.payload else None
            if parts[-2:] == list(topics.MODEL_STATE) and body is not None:
                st = ModelState.model_validate(body)
                with self.lock:
                    self.states[st.device] = st
            elif parts[-1] == topics.STATUS and isinstance(body, dict):
                with self.lock:
                    self.status[parts[-2]] = str(body.get("state"))
        except Exception as exc:  # a bad message from some device must not stop the deployment
            log.warning("ignored an unreadable message on %s: %s", msg.topic[:200], str(exc)[:200])

    def __enter__(self) -> "FleetLink":
        try:
            self.client.connect(self.b.host, self.b.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError("cannot reach the MQTT broker at %s:%d: %s" % (self.b.host, self.b.port, exc))
        self.client.loop_start()
        if not self.connected.wait(self.b.connect_timeout):
            self.client.loop_stop()
            raise BrokerError("the MQTT broker at %s:%d did not accept the connection within %.0f s"
                              % (self.b.host, self.b.port, self.b.connect_timeout))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(self.b.connect_timeout)
        if not info.is_published():
            raise BrokerError("the broker did not confirm the message on %s" % topic)

    def state_of(self, device: str) -> Optional[ModelState]:
        with self.lock:
            return self.states.get(device)


def desired_message(opts: DeployOptions, device: str, manifest: Any, sha256: str, size: int) -> Desired:
    return Desired(id=payloads.new_id(), device=device, name=manifest.name, version=manifest.version,
                   counter=manifest.counter, files=manifest.files, created=payloads.iso(time.time()),
                   expires=manifest.expires, url=opts.url, archive=Archive(sha256=sha256, size=size),
                   rollout=opts.policy)


def deploy(opts: DeployOptions) -> Dict[str, Any]:
    """Publish and follow the rollout; the report per device. RolloutError when a device rejected or rolled back
    (or did not finish in time): the devices after it were not sent the message."""
    manifest, sha256, size = read_pack(opts.pack)
    key = load_private(opts.key) if opts.key else None
    report: Dict[str, Any] = {"package": manifest.name, "version": manifest.version, "counter": manifest.counter,
                              "devices": {}}
    with FleetLink(opts.broker) as link:
        devices = list(opts.devices)
        if opts.all_online:
            time.sleep(opts.discover_seconds)  # the retained status of every device arrives meanwhile
            with link.lock:
                devices += sorted(d for d, s in link.status.items() if s == "online" and d not in devices)
        if not devices:
            raise ConfigError("no devices to deploy to: give --device ID or --all-online (none is online now)",
                              field="--device")
        waves = [devices[:opts.canary], devices[opts.canary:]] if 0 < opts.canary < len(devices) else [devices]
        for n, wave in enumerate(waves):
            sent = {}
            for device in wave:
                msg = desired_message(opts, device, manifest, sha256, size)
                link.publish(topics.topic(opts.broker.topic_prefix, device, *topics.MODEL_DESIRED),
                             sign(msg.model_dump_json().encode("utf-8"), key))
                sent[device] = msg.id
                report["devices"][device] = {"state": "sent", "desired_id": msg.id}
                log.info("desired %s %s (counter %d) -> %s", manifest.name, manifest.version, manifest.counter,
                         device)
            canary = len(waves) > 1 and n == 0
            if canary or opts.wait:
                _follow(link, sent, opts.timeout, report, "canary" if canary else "wave")
    return report


def _follow(link: FleetLink, sent: Dict[str, str], timeout: float, report: Dict[str, Any], what: str) -> None:
    end = time.monotonic() + timeout
    pending = dict(sent)
    while pending:
        for device, desired_id in list(pending.items()):
            st = link.state_of(device)
            if st is None or st.desired_id != desired_id:
                continue
            report["devices"][device] = _row(st)
            if st.state in FAILED:
                raise RolloutError("%s %s %s: %s. The rollout stopped%s." % (
                    what, device, st.state, st.reason or "-", "; the other devices were not sent it"
                    if what == "canary" else ""))
            if st.state in DONE and st.health == "passed":
                del pending[device]
        if pending and time.monotonic() > end:
            raise RolloutError("%s %s did not report active with a passed health window within %.0f s (last: %s)" % (
                what, ", ".join(sorted(pending)), timeout, ", ".join(
                    "%s %s" % (d, report["devices"][d]["state"]) for d in sorted(pending))))
        time.sleep(0.1)


def _row(st: ModelState) -> Dict[str, Any]:
    row = {"state": st.state, "active": "%s %s (%d)" % (st.active.name, st.active.version, st.active.counter),
           "health": st.health, "reason": st.reason, "ts": st.ts, "desired_id": st.desired_id}
    if st.candidate is not None:
        row["candidate"] = "%s %s (%d)" % (st.candidate.name, st.candidate.version, st.candidate.counter)
    if st.shadow is not None:
        row["shadow"] = st.shadow.model_dump()
    if st.progress is not None:
        row["progress"] = st.progress
    return row


def fleet_status(b: Broker, wait: float = 1.5) -> Dict[str, Any]:
    """Every device's retained model state (and online status)."""
    with FleetLink(b) as link:
        time.sleep(wait)
        with link.lock:
            states, status = dict(link.states), dict(link.status)
    out = {}
    for device in sorted(set(states) | set(status)):
        row = _row(states[device]) if device in states else {"state": None}
        row["status"] = status.get(device)
        out[device] = row
    return out
