"""The agent against a real mosquitto started on a free loopback port (stopped, killed and restarted for outages)."""
import base64
import io
import os
import shutil
import signal
import socket
import sqlite3
import time

import pytest
from PIL import Image

from support import EXAMPLE, require_or_skip, run_cli
from support.mqtt import (Broker, Collector, agent_config, finish, folder_camera, free_port, mosquitto_binary,
                       start_agent)

VAL = os.path.join(EXAMPLE, "images", "val")


def outbox_rows(path, kind=None):
    db = sqlite3.connect(path)
    try:
        q = "SELECT payload FROM outbox" + (" WHERE kind = ?" if kind else "")
        return [bytes(r[0]) for r in db.execute(q, (kind,) if kind else ())]
    finally:
        db.close()


def counters(path):
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT name, value FROM counters"))
    finally:
        db.close()


def test_results_samples_state_stats_status_arrive_with_the_documented_payloads(broker, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, thresholds={"default": 0.9999})
    code, out, err = finish(start_agent(cfg))
    assert code == 0, err[-3000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"))
    results = [p for _, p, _ in sub.of("result")]
    stats = [p for _, p, _ in sub.of("stats")]
    processed, dropped = stats[-1]["frames"], stats[-1]["dropped_frames"]
    assert processed + dropped == 300  # a frame replaced in the latest-frame slot is dropped and counted
    assert len(results) == processed and len({r["id"] for r in results}) == processed and processed > 250
    r = results[0]
    assert set(r) == {"v", "id", "device", "camera", "ts", "frame", "model", "label", "score", "accepted",
                      "threshold", "calibrated", "top_k", "latency_ms"}
    assert r["v"] == 1 and r["device"] == "dev1" and r["camera"] == "front" and r["threshold"] == 0.9999
    assert r["model"]["name"] == "digits-cnn" and len(r["model"]["sha256"]) == 12
    assert r["calibrated"] is False  # the bundled package predates calibration (schema /1)
    assert len(r["top_k"]) == 3 and r["accepted"] == (r["score"] >= 0.9999)
    uncertain = [x for x in results if not x["accepted"]]
    assert uncertain, "threshold 0.9999 should leave some frames uncertain"
    samples = [p for _, p, _ in sub.of("sample")]
    assert len(samples) == len(uncertain)  # quota 1000/min: every uncertain frame is sampled
    s = samples[0]
    assert s["reason"] == "low_confidence" and s["score"] < s["threshold"] and s["result_id"] in {x["id"] for x in
                                                                                                  uncertain}
    img = Image.open(io.BytesIO(base64.b64decode(s["image"]["data"])))
    assert img.format == "JPEG" and img.size == (s["image"]["width"], s["image"]["height"]) == (48, 48)
    assert all(len(p) <= 128 * 1024 for t, p, _ in sub.messages if t.endswith("/sample"))
    states = sub.of("state")
    assert states and all(retained is False for _, _, retained in states)  # live delivery of retained publishes
    assert stats[-1]["outbox"]["counters"]["sent_result"] == processed  # the final stats follow the results' acks
    assert {"fps", "inference_ms", "capture_to_publish_ms", "capture_to_ack_ms", "dropped_frames", "rss_bytes",
            "uptime_s", "samples"} <= set(stats[-1])
    stages = stats[-1]["stages_ms"]  # where a frame's time goes
    assert set(stages) == {"decode", "preprocess", "inference", "postprocess", "commit", "publish"}
    for name, p in stages.items():
        assert p["p50"] is not None and 0 <= p["p50"] <= p["p95"] < 5000, (name, p)
    assert stages["decode"]["p50"] > 0 and stages["inference"]["p50"] > 0
    sub.close()
    late = Collector(broker.port, client_id="late")  # retained: status and the latest state
    assert late.wait_for(lambda s: s.of("status") and s.of("state"), 5)
    assert late.of("status")[0][1]["state"] == "stopped" and late.of("status")[0][2] is True
    late.close()


def test_last_will_offline_when_the_agent_is_killed(broker, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=20))
    proc = start_agent(cfg)
    try:
        assert sub.wait_for(lambda s: s.saw_status("online"), 30)
        assert sub.wait_for(lambda s: len(s.of("result")) > 5, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda s: s.saw_status("offline"), 10)
    finally:
        proc.kill()
        sub.close()


def test_sigterm_drains_and_exits_within_bounds(broker, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=50))
    proc = start_agent(cfg)
    assert sub.wait_for(lambda s: len(s.of("result")) > 20, 30)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc, 30)
    assert code == 0, err[-2000:]
    assert time.time() - t0 < 10
    assert sub.wait_for(lambda s: s.saw_status("stopped"), 5)
    assert outbox_rows(str(tmp_path / "outbox.db"), "result") == []  # drained
    sub.close()


def test_broker_killed_and_restarted_three_times_loses_no_result(broker, tmp_path):
    sub = Collector(broker.port, persistent=True, client_id="persistent-collector")
    assert sub.wait_for(lambda s: s.client.is_connected(), 5)
    time.sleep(1.5)  # let mosquitto autosave the session before the first kill
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=60))
    proc = start_agent(cfg, "--max-frames", "600", "--drain-timeout", "30")
    try:
        for _ in range(3):
            assert sub.wait_for(lambda s: len(s.of("result")) > 0, 30)
            time.sleep(1.5)
            # mosquitto sends PUBACK before it saves its database, so a SIGKILL can lose a message it has already
            # acknowledged: broker durability, which no client can repair. So: freeze the agent until the broker has
            # saved and forwarded all it was sent; freeze the broker and let the agent send into it (messages that
            # are never acknowledged); kill the broker. Those unacknowledged ones must come from the outbox again.
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            broker.proc.send_signal(signal.SIGSTOP)
            proc.send_signal(signal.SIGCONT)
            time.sleep(1.0)
            broker.kill()
            time.sleep(1.0)
            broker.start()
        code, out, err = finish(proc, 120)
        assert code == 0, err[-3000:]
    finally:
        proc.kill()
    ids = lambda s: {p["id"] for _, p, _ in s.of("result")}  # noqa: E731
    sub.wait_for(lambda s: len(ids(s)) >= 600, 30)
    got = [p["id"] for _, p, _ in sub.of("result")]
    assert len(set(got)) == 600, "missing %d of 600 results" % (600 - len(set(got)))
    print("duplicates delivered: %d" % (len(got) - len(set(got))))
    assert outbox_rows(str(tmp_path / "outbox.db")) == []
    sub.close()


def committed_results(db: str) -> int:
    """Results the agent has committed to its outbox so far (0 while the file or its tables do not exist yet)."""
    if not os.path.exists(db):
        return 0
    try:
        return len(outbox_rows(db, "result"))
    except sqlite3.OperationalError:  # the file exists but the agent is still creating its tables
        return 0


def test_stop_while_the_broker_is_away_waits_for_it_and_drains(broker, tmp_path):
    sub = Collector(broker.port, persistent=True, client_id="drain-collector")
    assert sub.wait_for(lambda s: s.client.is_connected(), 5)
    broker.stop()  # a clean stop saves the collector's session
    cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=100))
    proc = start_agent(cfg, "--max-frames", "20", "--drain-timeout", "60")
    try:
        db = str(tmp_path / "outbox.db")
        end = time.time() + 30
        while time.time() < end and committed_results(db) < 20:
            time.sleep(0.2)
        time.sleep(1.0)  # all 20 frames done: the agent is in its drain, with the broker away
        assert proc.poll() is None, "the agent gave up on the outbox while the broker was away"
        broker.start()
        code, _, err = finish(proc, 90)
    finally:
        proc.kill()
    assert code == 0, err[-2000:]
    assert "broker away: waiting up to 60 s to publish" in err
    assert sub.wait_for(lambda s: len({p["id"] for _, p, _ in s.of("result")}) == 20, 30)
    assert outbox_rows(db) == []
    sub.close()


def test_agent_killed_mid_stream_loses_nothing_committed(tmp_path):
    require_or_skip(mosquitto_binary() is not None, "mosquitto")
    port = free_port()  # no broker yet: everything the agent accepts stays in the outbox
    cfg = agent_config(tmp_path, port, cameras=folder_camera(fps=100))
    db = str(tmp_path / "outbox.db")
    proc = start_agent(cfg)

    end = time.time() + 30
    while time.time() < end and committed_results(db) < 50:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    import json

    committed = {json.loads(p)["id"] for p in outbox_rows(db, "result")}
    assert len(committed) >= 50
    broker = Broker(tmp_path / "broker", port=port).start()
    try:
        sub = Collector(port)
        code, _, err = finish(start_agent(cfg, "--max-frames", "5"), 60)
        assert code == 0, err[-2000:]
        sub.wait_for(lambda s: committed <= {p["id"] for _, p, _ in s.of("result")}, 20)
        missing = committed - {p["id"] for _, p, _ in sub.of("result")}
        assert not missing, "%d committed results never arrived" % len(missing)
        sub.close()
    finally:
        broker.stop()


def test_outbox_bound_during_outage_keeps_results_evicts_samples(tmp_path):
    port = free_port()  # the broker is away for the whole run
    cfg = agent_config(tmp_path, port, thresholds={"default": 1.0}, outbox={
        "path": str(tmp_path / "outbox.db"), "max_bytes": 400000})
    code, _, err = finish(start_agent(cfg, "--drain-timeout", "1"), 120)
    assert code == 0, err[-2000:]  # kept running to the end of its input
    c = counters(str(tmp_path / "outbox.db"))
    assert c.get("evicted_sample", 0) + c.get("dropped_sample", 0) > 0
    assert "evicted_result" not in c and "dropped_result" not in c
    assert len(outbox_rows(str(tmp_path / "outbox.db"), "result")) > 250  # every processed frame's result


def test_folder_camera_emptied_and_refilled_reports_and_recovers(broker, tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    src = os.path.join(VAL, "seven")
    names = sorted(os.listdir(src))[:5]
    for n in names:
        shutil.copy(os.path.join(src, n), str(folder / n))
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, cameras=[
        {"name": "front", "source": {"type": "folder", "path": str(folder), "fps": 20, "loop": True,
                                     "reconnect_min": 0.2, "reconnect_max": 0.5}}])
    proc = start_agent(cfg)
    state = lambda s: [p["cameras"]["front"]["state"] for _, p, _ in s.of("stats")]  # noqa: E731
    try:
        assert sub.wait_for(lambda s: "online" in state(s), 30)
        for n in names:
            os.unlink(str(folder / n))
        assert sub.wait_for(lambda s: "reconnecting" in state(s), 15)
        before = len(sub.of("result"))
        for n in names:
            shutil.copy(os.path.join(src, n), str(folder / n))
        assert sub.wait_for(lambda s: state(s)[-1] == "online" and len(s.of("result")) > before + 5, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc, 30)
        sub.close()


def notify_datagrams(tmp_path, cfg, *args, timeout=30.0, finish_timeout=60.0):
    """Run the agent with ``$NOTIFY_SOCKET`` on a real datagram socket: (exit code, stderr, the datagrams it sent up
    to STOPPING=1, read for at most ``timeout`` s)."""
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(1)
    proc = start_agent(cfg, *args, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    got = []
    end = time.time() + timeout
    try:
        while time.time() < end:
            try:
                msg = srv.recv(4096).decode()
            except socket.timeout:
                continue
            got.append(msg)
            if "STOPPING=1" in msg:
                break
    finally:
        code, _, err = finish(proc, finish_timeout)
        srv.close()
    return code, err, got


def test_sd_notify_ready_watchdog_stopping(broker, tmp_path):
    code, err, got = notify_datagrams(tmp_path, agent_config(tmp_path, broker.port))
    assert code == 0, err[-2000:]
    ready = [i for i, m in enumerate(got) if m.startswith("READY=1")]
    watchdog = [i for i, m in enumerate(got) if m == "WATCHDOG=1"]
    assert got[0] == "STATUS=loading model" and len(ready) == 1
    assert watchdog and min(watchdog) > ready[0]  # only after the model is loaded and frames are processed
    assert got[-1] == "STOPPING=1"


# -- bad config corpus through the real command ---------------------------------------------------------------
@pytest.mark.parametrize("change,code,needle", [
    ({"mqtt": {"host": "127.0.0.1", "prot": 1}}, 2, "unknown field"),
    ({"mqtt": {"host": "127.0.0.1", "port": "many"}}, 2, "mqtt.port"),
    ({"package": "/no/such/package"}, 3, "no such package"),
    ({"cameras": [{"name": "front", "source": {"type": "url", "url": "camera-7"}}]}, 2, "rtsp://"),
    ({"mqtt": {"host": "127.0.0.1", "tls": {"ca_file": "/no/such/ca.pem"}}}, 2, "mqtt.tls.ca_file"),
])
def test_bad_config_corpus(tmp_path, change, code, needle):
    cfg = agent_config(tmp_path, 1, **change)
    for extra in ([], ["--check-config"]):
        proc = run_cli("agent", "--config", cfg, *extra)
        if extra and code == 3:
            continue  # --check-config validates the file, not the package
        assert proc.returncode == code, (proc.returncode, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_two_cameras_over_mqtt_311(broker, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, cameras=[
        {"name": "left", "source": {"type": "folder", "path": os.path.join(VAL, "three"), "fps": 30, "loop": True}},
        {"name": "right", "source": {"type": "folder", "path": os.path.join(VAL, "seven"), "fps": 30, "loop": True}}],
        mqtt={"host": "127.0.0.1", "port": broker.port, "protocol": "3.1.1"})
    code, _, err = finish(start_agent(cfg, "--max-frames", "60"), 60)
    assert code == 0, err[-2000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"), 10)
    by_topic = {}
    for t, p, _ in sub.of("result"):
        by_topic.setdefault(t, []).append(p)
    assert set(by_topic) == {"edgesight/dev1/left/result", "edgesight/dev1/right/result"}
    assert {p["label"] for p in by_topic["edgesight/dev1/left/result"]} == {"three"}
    assert {p["label"] for p in by_topic["edgesight/dev1/right/result"]} == {"seven"}
    assert sum(len(v) for v in by_topic.values()) == 60
    sub.close()



@pytest.mark.parametrize("runtime,layout", [("onnxruntime", "nchw"), ("tflite", "nhwc")])
def test_each_runtime_classifies_the_frames_it_is_fed(broker, tmp_path, runtime, layout):
    """The agent preprocesses straight into the model's own layout (NHWC for TFLite): every published label must be
    the folder the frame came from (frame seq n = the n-th image of the sorted folder)."""
    from edgesight.calibration.images import list_images

    files = list_images(VAL)
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, runtime=runtime, samples={"enabled": False})
    code, _, err = finish(start_agent(cfg, "--max-frames", "60"), 60)
    assert code == 0, err[-2000:]
    assert "on %s, frames preprocessed to %s" % (runtime, layout) in err
    assert sub.wait_for(lambda s: s.saw_status("stopped"), 10)
    results = [p for _, p, _ in sub.of("result")]
    assert len(results) == 60 and all(r["model"]["runtime"] == runtime for r in results)
    truth = [os.path.basename(os.path.dirname(p)) for p, _ in files]
    correct = sum(r["label"] == truth[r["frame"] - 1] for r in results)
    assert correct >= 58, [(r["frame"], r["label"], truth[r["frame"] - 1]) for r in results if
                           r["label"] != truth[r["frame"] - 1]]
    sub.close()

def test_video_file_source(broker, tmp_path):
    try:
        import cv2
    except ImportError:
        cv2 = None
    require_or_skip(cv2 is not None, "opencv (pip install 'edgesight[camera]')")
    from edgesight.calibration.images import list_images, load_image

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 48))
    frames = [p for p, lbl in list_images(VAL) if lbl == "four"][:12]
    for p in frames:
        writer.write(load_image(p)[:, :, ::-1])  # OpenCV writes BGR
    writer.release()
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, cameras=[
        {"name": "clip", "source": {"type": "video", "path": video, "fps": 100, "loop": False}}])
    code, _, err = finish(start_agent(cfg), 60)
    assert code == 0, err[-2000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"), 10)
    labels = [p["label"] for _, p, _ in sub.of("result")]
    assert 0 < len(labels) <= 12 and labels.count("four") >= len(labels) - 1  # MJPEG is lossy: allow one miss
    sub.close()


def dashboard():
    import json

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "grafana", "edgesight-agent.json")) as f:
        return json.load(f)


def dashboard_metrics():
    """Every edgesight_* metric named in a query of docs/grafana/edgesight-agent.json."""
    import re

    dash = dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [dash["templating"]["list"][1]["definition"]]
    return {m for e in exprs for m in re.findall(r"\bedgesight_[a-z_]+\b", e)}


def test_the_grafana_dashboard_is_well_formed():
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["schemaVersion"] >= 36
    for p in dash["panels"]:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    # what issue 19 asks to see, each in some panel
    for metric in ("fps", "inference_ms", "stage_ms", "uncertain_share", "outbox_depth", "samples_total",
                   "camera_up", "model_info"):
        assert "edgesight_" + metric in dashboard_metrics(), metric


def test_metrics_endpoint_is_scraped(broker, tmp_path):
    import urllib.request

    from support.mqtt import free_port

    port = free_port()
    cfg = agent_config(tmp_path, broker.port, metrics={"enabled": True, "port": port}, cameras=folder_camera(fps=50))
    proc = start_agent(cfg)
    try:
        def frames_in(text):
            values = [ln.split()[1] for ln in text.splitlines() if ln.startswith("edgesight_frames_total ")]
            return float(values[0]) if values else 0.0

        # Wait for a sent *result*: the retained status message is sent before the first frame is processed.
        text = ""
        end = time.time() + 30
        while time.time() < end:
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read().decode()
                if frames_in(text) > 0 and 'event="sent",kind="result"' in text:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert "# TYPE edgesight_frames_total counter" in text, text
        assert frames_in(text) > 0, text
        assert 'edgesight_camera_up{camera="front",state="online"} 1.0' in text
        assert "edgesight_mqtt_connected 1.0" in text and 'edgesight_inference_ms{quantile="0.95"}' in text
        assert 'edgesight_outbox_events_total{event="sent",kind="result"}' in text
        for stage in ("decode", "preprocess", "inference", "postprocess", "commit", "publish"):
            assert 'edgesight_stage_ms{quantile="0.5",stage="%s"}' % stage in text, stage
        assert 'edgesight_model_info{artifact="model.fp32.onnx",name="digits-cnn",runtime="onnxruntime",version="1.0.0"} 1.0' \
            in text, [ln for ln in text.splitlines() if "model_info" in ln]
        # the Grafana dashboard asks only for metrics the agent exports (a renamed metric breaks this, not a panel)
        exported = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
        queried = dashboard_metrics()
        assert queried and queried <= exported, sorted(queried - exported)
        with pytest.raises(OSError):  # only /metrics is served (HTTP 404 otherwise)
            urllib.request.urlopen("http://127.0.0.1:%d/other" % port, timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc, 30)


def test_watchdog_keeps_pinging_while_the_camera_is_in_a_reported_outage(broker, tmp_path):
    cfg = agent_config(tmp_path, broker.port, cameras=[
        {"name": "front", "source": {"type": "folder", "path": str(tmp_path / "not-there-yet"), "fps": 10,
                                     "reconnect_min": 0.2, "reconnect_max": 0.5}}])
    code, err, got = notify_datagrams(tmp_path, cfg, "--duration", "3", finish_timeout=30)
    assert code == 0, err[-2000:]
    assert got.count("WATCHDOG=1") >= 3  # no frames at all, but the outage is known and reported
    assert "not-there-yet does not exist" in err
