"""A real mosquitto broker for tests (free loopback port, stop/kill/restart for outages), a collecting subscriber
and a helper that runs the real agent as a subprocess."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import yaml

from . import EXAMPLE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary():
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class Broker(object):
    def __init__(self, workdir, extra_conf: str = "", port: int = None, tls: dict = None,
                 save_every_change: bool = True) -> None:
        """``save_every_change``: the tests kill the broker with SIGKILL and expect its sessions back, so it saves
        its database after every change; that costs a lot of CPU with big payloads, so benchmarks turn it off
        and use mosquitto's default (save every 30 minutes and on a clean stop)."""
        self.save_every_change = save_every_change
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.tls = tls
        self.proc = None
        self.log = os.path.join(self.dir, "mosquitto.log")

    def conf(self) -> str:
        lines = ["listener %d 127.0.0.1" % self.port, "persistence true",
                 "persistence_location %s/" % self.dir, "log_dest file %s" % self.log,
                 "log_type error", "log_type warning", "log_type notice"]
        if self.save_every_change:
            lines += ["autosave_interval 1", "autosave_on_changes true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # as root mosquitto would drop to 'mosquitto', who cannot read tmp dirs
        if self.tls:
            lines += ["cafile %s" % self.tls["ca"], "certfile %s" % self.tls["cert"], "keyfile %s" % self.tls["key"]]
            if self.tls.get("require_certificate"):
                lines += ["require_certificate true"]
        if "allow_anonymous" not in self.extra_conf:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n" + self.extra_conf + "\n"

    def start(self, timeout: float = 10.0) -> "Broker":
        path = os.path.join(self.dir, "mosquitto.conf")
        with open(path, "w") as f:
            f.write(self.conf())
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", path], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                with open(self.log) as f:
                    raise RuntimeError("mosquitto exited: %s" % f.read()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on %d" % self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Collector(object):
    """Subscribes (MQTT 5) and keeps every message; ``persistent`` uses a session that outlives disconnects."""

    def __init__(self, port: int, topic: str = "edgesight/#", persistent: bool = False, client_id: str = None,
                 username: str = None, password: str = None, tls: dict = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes

        self.messages = []
        self.lock = threading.Lock()
        self.topic = topic
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or ("collector-%d" % os.getpid()), protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.reconnect_delay_set(1, 2)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=not persistent, properties=props)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.retain))

    def of(self, suffix: str):
        with self.lock:
            return [(t, json.loads(p), r) for t, p, r in self.messages if t.endswith("/" + suffix) and p]

    def saw_status(self, state: str) -> bool:
        """A ``status`` message with this state has arrived."""
        return any(p["state"] == state for _, p, _ in self.of("status"))

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic_filter: str, seconds: float = 2.0) -> dict:
    """The retained messages matching ``topic_filter`` as a new subscriber gets them: {topic: decoded payload}
    (a topic whose last message is empty has none: it was removed)."""
    col = Collector(port, topic=topic_filter)
    time.sleep(seconds)
    col.close()
    last = {}
    for t, p, _ in col.messages:
        last[t] = p
    return {t: json.loads(p) for t, p in last.items() if p}


def folder_camera(path: str = os.path.join(EXAMPLE, "images", "val"), fps: float = 100, loop: bool = True,
                  name: str = "front") -> list:
    """The ``cameras`` section for one camera replaying an image folder (the example's validation split)."""
    return [{"name": name, "source": {"type": "folder", "path": str(path), "fps": fps, "loop": loop}}]


def agent_config(tmp_path, port: int, **over) -> str:
    """Write an agent YAML for the example package and return its path; ``over`` replaces top-level sections."""
    cfg = {
        "device_id": "dev1",
        "package": os.path.join(EXAMPLE, "package"),
        "cameras": folder_camera(fps=100, loop=False),
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min": 1, "reconnect_max": 2},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "stats": {"interval": 1},
        "samples": {"max_per_minute": 1000, "min_gap": 0, "dedup": {"enabled": False}},
    }
    cfg.update(over)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def finish(proc: subprocess.Popen, timeout: float = 60):
    """Wait for a process started by ``start_agent``: (exit code, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def start_agent(config: str, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", config] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, **(env or {})))


def publish(port: int, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
    """One message, confirmed by the broker (QoS 1), from a throwaway MQTT 5 client."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
