"""Agent pieces without a broker: decisions, outbox, config errors, artifact choice, JPEG sizing, sd_notify."""
import socket
import sqlite3

import numpy as np
import pytest

from edgesight.agent import decisions
from edgesight.agent.config import load_config
from edgesight.agent.outbox import Outbox
from edgesight.agent.samples import jpeg_within
from edgesight.agent.sdnotify import Notifier
from edgesight.errors import ConfigError, PackageError
from edgesight.runtimes import load_package

from conftest import EXAMPLE_PACKAGE


# -- decisions -------------------------------------------------------------------------------------------------
def test_thresholds_and_acceptance():
    assert decisions.threshold_for("cat", 0.8, {"cat": 0.6}) == 0.6
    assert decisions.threshold_for("dog", 0.8, {"cat": 0.6}) == 0.8
    assert decisions.is_accepted(0.8, 0.8) and not decisions.is_accepted(0.79, 0.8)


def test_state_hysteresis():
    t = decisions.StateTracker(hysteresis=3)
    assert [t.update("cat", True) for _ in range(3)] == [None, None, "cat"]
    assert t.update("dog", True) is None and t.update("dog", False) is None  # uncertain: no count, no reset
    assert t.update("dog", True) is None and t.update("dog", True) == "dog"
    assert t.update("dog", True) is None  # no change, no message
    one = decisions.StateTracker()
    assert one.update("a", True) == "a" and one.update("b", True) == "b"


def test_publish_gate():
    every = decisions.PublishGate("every_frame", min_interval=1.0)
    assert every.should_publish("a", True, 0.0) and not every.should_publish("a", True, 0.5)
    assert every.should_publish("b", True, 0.6)  # a change is never held back
    assert every.should_publish("b", True, 1.7)
    change = decisions.PublishGate("on_change")
    assert change.should_publish("a", True, 0) and not change.should_publish("a", True, 10)
    assert change.should_publish("a", False, 11)


def test_percentile():
    assert decisions.percentile([], 50) is None
    assert decisions.percentile([3, 1, 2], 50) == 2 and decisions.percentile(range(101), 95) == 95


# -- outbox ----------------------------------------------------------------------------------------------------
def test_outbox_ack_and_survives_reopen(tmp_path):
    path = str(tmp_path / "o.db")
    ob = Outbox(path)
    a = ob.put("result", "t/r", b"x" * 10)
    b = ob.put("sample", "t/s", b"y" * 10)
    assert [r.id for r in ob.pending(10)] == [a, b]  # results before samples
    assert ob.ack(a) and not ob.ack(a)
    ob.close()
    ob = Outbox(path)  # what was committed is still there
    assert [r.id for r in ob.pending(10)] == [b] and ob.bytes == 13
    assert ob.counters()["sent_result"] == 1
    ob.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outbox_evicts_stats_then_samples_never_results_for_lower(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"), max_bytes=1 << 16)
    size = 10000
    ids = {"stats": ob.put("stats", "s", b"s" * size), "sample": ob.put("sample", "p", b"p" * size)}
    results = [ob.put("result", "r", b"r" * size) for _ in range(4)]  # 6 x 10 KB = 60 KB of 64 KB
    assert ob.put("result", "r", b"r" * size) is not None  # needs room: the stats row goes first
    c = ob.counters()
    assert c == {"evicted_stats": 1}
    assert ob.put("result", "r", b"r" * size) is not None  # then the sample
    assert ob.counters()["evicted_sample"] == 1
    assert ob.put("sample", "p", b"p" * size) is None  # a sample cannot push out results
    assert ob.counters()["dropped_sample"] == 1
    assert ob.put("result", "r", b"r" * size) is not None  # full of results: the oldest result goes, counted
    assert ob.counters()["evicted_result"] == 1
    left = {r.id for r in ob.pending(100)}
    assert ids["stats"] not in left and ids["sample"] not in left and results[0] not in left
    assert ob.bytes <= 1 << 16


def test_outbox_dead_letters_after_max_attempts(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"), max_attempts=2)
    i = ob.put("result", "denied/topic", b"{}")
    assert ob.refused(i, "Not authorized") is False
    assert ob.refused(i, "Not authorized") is True
    assert ob.depth() == 0 and ob.bytes == 0
    assert ob.dead_letters() == [{"id": i, "kind": "result", "topic": "denied/topic", "attempts": 2,
                                  "reason": "Not authorized"}]
    assert ob.counters()["dead_result"] == 1


# -- config ----------------------------------------------------------------------------------------------------
def write(tmp_path, text):
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return str(p)


GOOD = """package: %s
cameras:
  - name: front
    source: {type: folder, path: /tmp}
""" % EXAMPLE_PACKAGE


def test_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.mqtt.protocol == "5" and cfg.mqtt.port == 1883 and cfg.runtime == "auto"
    assert cfg.cameras[0].source.fps == 10.0 and cfg.outbox.max_attempts == 5


@pytest.mark.parametrize("text,field,line,needle", [
    (GOOD + "mqtt:\n  hots: x\n", "mqtt.hots", 6, "unknown field"),
    (GOOD + "mqtt:\n  port: many\n", "mqtt.port", 6, "integer"),
    (GOOD.replace("type: folder, path: /tmp", "type: url, url: camera.local"), "cameras[0].source", 4, "rtsp://"),
    (GOOD + "mqtt:\n  protocol: 4\n", "mqtt.protocol", 6, "5 or 3.1.1"),
    ("cameras: []\n", "package", None, "missing"),
    (GOOD + "mqtt:\n  tls: {ca_file: /no/such/ca.pem}\n", "mqtt.tls.ca_file", None, "no such file"),
])
def test_config_errors_name_field_and_line(tmp_path, text, field, line, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert err.value.field == field and needle in msg, msg
    if line:
        assert "(line %d)" % line in msg, msg


def test_config_yaml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_config(write(tmp_path, "package: [x\n"))


# -- artifact choice -------------------------------------------------------------------------------------------
def choose_artifact(pkg, runtime="auto", machine=None):
    return pkg.artifact_for(runtime, machine=machine)


def test_choose_artifact_by_platform():
    pkg = load_package(EXAMPLE_PACKAGE)
    assert choose_artifact(pkg, "auto", machine="x86_64")[1].runtime == "onnxruntime"
    assert choose_artifact(pkg, "auto", machine="aarch64")[1].runtime == "tflite"
    assert choose_artifact(pkg, "tflite", machine="x86_64")[1].file == "model.fp32.tflite"
    with pytest.raises(PackageError, match="no usable artifact"):
        choose_artifact(pkg, "tensorrt")


# -- samples ---------------------------------------------------------------------------------------------------
def test_jpeg_fits_the_budget():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)  # incompressible: forces shrinking
    jpeg, w, h = jpeg_within(noise, "bgr", 90 * 1024)
    assert len(jpeg) <= 90 * 1024 and jpeg[:2] == b"\xff\xd8" and max(w, h) <= 1280
    small, w2, h2 = jpeg_within(np.zeros((48, 48, 3), np.uint8), "rgb", 90 * 1024)
    assert (w2, h2) == (48, 48)


# -- sd_notify on a real datagram socket -------------------------------------------------------------------------
def test_notifier_sends_datagrams(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    n = Notifier(socket_path=path, watchdog_usec=2000000)
    assert n.ready("loaded")
    assert srv.recv(1024) == b"READY=1\nSTATUS=loaded"
    assert n.watchdog(now=100.0) and not n.watchdog(now=100.5)  # at most every WATCHDOG_USEC / 2
    assert srv.recv(1024) == b"WATCHDOG=1"
    assert n.watchdog(now=101.1)
    assert srv.recv(1024) == b"WATCHDOG=1"
    n.extend_timeout(90)
    assert srv.recv(1024) == b"EXTEND_TIMEOUT_USEC=90000000"
    n.stopping()
    assert srv.recv(1024) == b"STOPPING=1"
    n.close()
    srv.close()


def test_notifier_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready() and not n.watchdog()


# -- worker failures end the agent loudly ------------------------------------------------------------------------
def test_capture_thread_failure_is_reported_and_stops_the_agent():
    import time

    from edgesight.agent.service import Agent
    from edgesight.agent.sources import Capture, Source
    from edgesight.errors import InferenceError

    class Broken(Source):
        def open(self):
            pass

        def read(self):
            raise RuntimeError("driver crashed")

    cap = Capture("cam", Broken(), fps=100).start()
    end = time.time() + 5
    while cap.failed is None and time.time() < end:
        time.sleep(0.01)
    assert cap.state == "failed" and "driver crashed" in cap.last_error

    class Worker(object):
        failed = None

    with pytest.raises(InferenceError, match="camera cam thread failed: RuntimeError: driver crashed"):
        Agent._check_threads([cap], Worker(), Worker())


def test_capture_latest_frame_slot_drops_stale_frames():
    import time

    from edgesight.agent.sources import Capture, Frame, Source

    class Counter(Source):
        n = 0

        def open(self):
            pass

        def read(self):
            self.n += 1
            return Frame(np.zeros((2, 2, 3), np.uint8), "rgb", time.time(), self.n)

    cap = Capture("cam", Counter(), fps=200).start()
    time.sleep(0.3)  # nobody takes frames: only the latest is kept
    frame = cap.take(timeout=1)
    cap.stop()
    assert frame is not None and frame.seq >= cap.captured - 1
    assert cap.dropped >= cap.captured - 2 > 10


class Numbered(object):
    """A finite source of numbered 2x2 frames (value = seq) for the capture and preprocessing stages."""

    def __new__(cls, count, value_offset=0):
        import time

        from edgesight.agent.sources import Frame, Source

        class _Source(Source):
            n = 0

            def open(self):
                pass

            def read(self):
                if self.n >= count:
                    return None
                self.n += 1
                return Frame(np.full((2, 2, 3), self.n + value_offset, np.uint8), "rgb", time.time(), self.n)

        return _Source()


def wait_until(condition, timeout=5.0):
    import time

    end = time.time() + timeout
    while not condition() and time.time() < end:
        time.sleep(0.005)
    assert condition()


def test_prefetch_prepares_the_latest_frame_only_after_the_last_one_was_taken():
    import time

    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.sources import Capture

    prepared = []

    def prepare(frame):
        prepared.append(frame.seq)
        return frame.image[None].astype(np.float32)

    cap = Capture("cam", Numbered(100000), fps=500).start()
    pre = Prefetch([cap], prepare).start()
    try:
        first = pre.take(timeout=2)
        assert first is not None and first.camera == "cam" and first.tensor.shape == (1, 2, 2, 3)
        assert float(first.tensor[0, 0, 0, 0]) == first.frame.seq % 256 and first.preprocess_ms >= 0
        wait_until(lambda: len(prepared) == 2)
        time.sleep(0.1)  # the camera goes on (~50 frames); the stage holds one prepared frame and waits
        assert len(prepared) == 2  # nothing prepared while the slot is full
        waiting = pre.take(timeout=1)
        newest = cap.captured  # the slot is empty now: the stage takes the camera's latest frame at once
        assert waiting is not None and waiting.frame.seq <= first.frame.seq + 2  # prepared when the first was taken
        wait_until(lambda: len(prepared) == 3)
        time.sleep(0.1)
        assert len(prepared) == 3
        fresh = pre.take(timeout=1)
        assert fresh is not None and fresh.frame.seq <= newest + 2  # taken when the slot emptied, not 0.1 s later
        assert fresh.frame.seq > waiting.frame.seq + 20  # the frames in between were never prepared...
        assert cap.dropped > 40  # ...but dropped and counted by the camera, not queued
    finally:
        pre.stop()
        cap.stop()


def test_prefetch_round_robin_and_drained_at_the_end_of_every_camera():
    import threading
    import time

    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.sources import Frame

    class Queued(object):
        """A camera whose frames are all waiting (no drops), to check the order deterministically."""

        def __init__(self, name, seqs):
            self.name, self.frames, self.lock, self.taken = name, list(seqs), threading.Lock(), 0

        def take(self, timeout):
            with self.lock:
                if self.frames:
                    self.taken += 1
                    seq = self.frames.pop(0)
                    return Frame(np.full((2, 2, 3), seq, np.uint8), "rgb", time.time(), seq)
            time.sleep(timeout)
            return None

        ended = property(lambda self: True)
        has_frame = property(lambda self: bool(self.frames))

    caps = [Queued("a", [1, 2, 3]), Queued("b", [11, 12, 13, 14, 15])]
    pre = Prefetch(caps, lambda f: f.image[None]).start()
    try:
        end, got = time.time() + 5, []
        while not pre.drained() and time.time() < end:
            item = pre.take(timeout=0.05)
            if item is not None:
                got.append((item.camera, int(item.tensor[0, 0, 0, 0])))
        assert pre.drained() and pre.take(timeout=0.01) is None
        assert got == [("a", 1), ("b", 11), ("a", 2), ("b", 12), ("a", 3), ("b", 13), ("b", 14), ("b", 15)]
    finally:
        pre.stop()


def test_prefetch_failure_is_reported_and_stops_the_agent():
    from edgesight.agent.prefetch import Prefetch
    from edgesight.agent.service import Agent
    from edgesight.agent.sources import Capture
    from edgesight.errors import InferenceError

    def prepare(frame):
        raise ValueError("frame has 7 channels")

    cap = Capture("cam", Numbered(10), fps=100).start()
    pre = Prefetch([cap], prepare).start()
    try:
        assert pre.take(timeout=2) is None  # returns at once when the stage failed
        assert isinstance(pre.failed, ValueError)

        class Worker(object):
            failed = None

        with pytest.raises(InferenceError, match="preprocessing thread failed: ValueError: frame has 7 channels"):
            Agent._check_threads([cap], Worker(), pre)
    finally:
        pre.stop()
        cap.stop()


def test_ready_made_camera_pipelines():
    from edgesight.agent.sources import jetson_csi_pipeline, pi_libcamera_pipeline

    csi = jetson_csi_pipeline(sensor_id=1, width=1920, height=1080, fps=29.97)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ") and "width=1920, height=1080, framerate=30/1" in csi
    assert csi.endswith("appsink drop=true max-buffers=1 sync=false")  # never queue stale frames
    pi = pi_libcamera_pipeline(640, 480, 15)
    assert pi.startswith("libcamerasrc ") and "format=BGR" in pi and "framerate=15/1" in pi


def test_auto_prefers_tensorrt_with_a_qdq_artifact_where_tensorrt_is_installed(monkeypatch, tmp_path):
    from edgesight.runtimes import package as package_module
    from edgesight.runtimes.package import Artifact

    pkg = load_package(EXAMPLE_PACKAGE)
    qdq = Artifact(runtime="onnxruntime", file="model.fp32.onnx", precision="int8", sha256="0" * 64, layout="nchw",
                   profile="tensorrt-qdq")
    manifest = pkg.manifest.model_copy(update={"artifacts": list(pkg.manifest.artifacts) + [qdq]})
    pkg = type(pkg)(pkg.root, manifest)
    assert choose_artifact(pkg, "auto", machine="aarch64")[1].runtime == "tflite"  # no tensorrt here
    monkeypatch.setattr(package_module, "is_installed", lambda name: True)
    idx, art = choose_artifact(pkg, "auto", machine="aarch64")[:2]
    assert idx == 2 and art.profile == "tensorrt-qdq"
    # an explicit onnxruntime choice on a CPU never takes the slow tensorrt-qdq profile first
    assert choose_artifact(pkg, "onnxruntime", machine="x86_64")[1].precision == "fp32"
