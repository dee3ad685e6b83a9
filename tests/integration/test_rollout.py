"""Model rollout end to end: a real broker, a real HTTP server, real signed packs of the example package, and the
agent as a process. Each check watches the retained ``model/state`` and the results the agent keeps publishing."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from edgesight.contract.rollout import Archive, RolloutPolicy, read_pack

from support import EXAMPLE
from support.mqtt import Collector, agent_config, folder_camera, free_port, publish, start_agent
from support.rollout import (FaultHandler, Keys, desired, engine_only, evil_pack, fails_on_frames, fault_server,
                             packed, serve_as, variant)

PERMUTED = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Keys, packed versions and the HTTP server, made once for the module."""
    d = tmp_path_factory.mktemp("rollout")
    keys, stranger = Keys(d / "keys"), Keys(d / "keys", "stranger")
    k = {"keys": keys, "stranger": stranger, "dir": d}
    k["v2"] = packed(variant(d / "v2"), d / "v2.espkg", keys, counter=100)
    k["v3"] = packed(variant(d / "v3", version="3.0.0"), d / "v3.espkg", keys, counter=200)
    k["permuted"] = packed(variant(d / "perm", version="2.1.0", labels=PERMUTED), d / "perm.espkg", keys, 110)
    k["failing"] = packed(variant(d / "fail", version="2.2.0", edit=fails_on_frames), d / "fail.espkg", keys, 120)
    k["never"] = packed(variant(d / "never", version="2.4.0", edit=lambda _, m: m["thresholds"].update(default=1.0)),
                        d / "never.espkg", keys, 140)
    k["engine"] = packed(variant(d / "eng", version="2.3.0", edit=engine_only), d / "eng.espkg", keys, 130)
    server = fault_server(d / "www")
    k["server"] = server
    yield k
    server.stop()


def config(tmp_path, port, kit, device="dev1", fps=20, metrics=None, **models):
    m = {"dir": str(tmp_path / "models"), "trusted_keys": [kit["keys"].pub], "download_timeout": 1,
         "download_attempts": 2, "backoff_max": 0.2, "shadow_share": 1.0}
    m.update(models)
    extra = {"metrics": metrics} if metrics else {}
    return agent_config(tmp_path, port, device_id=device, models=m, stats={"interval": 5}, **extra,
                        cameras=folder_camera(os.path.join(EXAMPLE, "images", "val"), fps=fps, loop=True))


def states(col, device="dev1"):
    return [p for t, p, _ in col.of("model/state") if t.startswith("edgesight/%s/" % device)]


def results(col, device="dev1"):
    return [p for t, p, _ in col.of("result") if t.startswith("edgesight/%s/" % device)]


def wait_state(col, pred, timeout=60, device="dev1"):
    assert col.wait_for(lambda c: any(pred(s) for s in states(c, device)), timeout), \
        json.dumps(states(col, device)[-5:], indent=1)[-3000:]
    return [s for s in states(col, device) if pred(s)][-1]


def send(port, msg_bytes, device="dev1"):
    publish(port, "edgesight/%s/model/desired" % device, msg_bytes, retain=True)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return err


def versions_after(col, t0, device="dev1"):
    return [r["model"]["version"] for r in results(col, device) if r["ts"] >= t0]


def test_deploy_swaps_without_restart_or_lost_frame_and_refuses_a_replay(broker, tmp_path, kit):
    col = Collector(broker.port)
    mport = free_port()
    agent = start_agent(config(tmp_path, broker.port, kit, shadow_share=0.2,  # the shadow's time budget in force
                               metrics={"enabled": True, "port": mport}))
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 10, 60)
        url = serve_as(kit["server"], kit["v2"], "v2.espkg")
        t0 = time.time()
        cli = subprocess.run([sys.executable, "-m", "edgesight", "deploy", kit["v2"], "--url", url, "--device", "dev1",
                              "--key", kit["keys"].priv, "--host", "127.0.0.1", "--port", str(broker.port),
                              "--shadow-frames", "30", "--health-seconds", "3", "--timeout", "60", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr[-3000:]
        report = json.loads(cli.stdout)
        assert report["devices"]["dev1"]["state"] == "active" and report["devices"]["dev1"]["health"] == "passed"
        assert time.time() - t0 < 60
        walk = [s["state"] for s in states(col) if s.get("desired_id") == report["devices"]["dev1"]["desired_id"]]
        for stage in ("downloading", "verifying", "shadow", "active"):
            assert stage in walk, walk
        assert walk.index("downloading") < walk.index("verifying") < walk.index("shadow") < walk.index("active")
        shadow = [s for s in states(col) if s["state"] == "active" and s.get("shadow")][-1]["shadow"]
        assert shadow["frames"] == 30 and shadow["agreement"] == 1.0
        assert agent.poll() is None  # the same process: no restart
        assert col.wait_for(lambda c: versions_after(c, "") and versions_after(c, "")[-1] == "2.0.0", 10)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        info = [ln for ln in text.splitlines() if ln.startswith("edgesight_model_info{")]
        assert len(info) == 1 and 'version="2.0.0"' in info[0], info  # /metrics names the model swapped in
        # a replay of an older counter is refused; the agent stays on v2
        url1 = serve_as(kit["server"], kit["v2"], "replay.espkg")
        msg, raw = desired(kit["v2"], url1, "dev1", kit["keys"], counter=50, version="0.9.0")
        send(broker.port, raw)
        st = wait_state(col, lambda s: s.get("desired_id") == msg.id and s["state"] == "rejected")
        assert "not above" in st["reason"] and st["active"]["counter"] == 100
        assert "/replay.espkg" not in FaultHandler.requests
        # deploying the active pack again finishes at once, without a download
        n = len(FaultHandler.requests)
        again = subprocess.run([sys.executable, "-m", "edgesight", "deploy", kit["v2"], "--url", url, "--device",
                                "dev1", "--key", kit["keys"].priv, "--host", "127.0.0.1", "--port", str(broker.port),
                                "--timeout", "30"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(FaultHandler.requests) == n
    finally:
        err = stop(agent)
        col.close()
    seq = [r["frame"] for r in results(col)]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "a frame number is missing around the swap"
    versions = [r["model"]["version"] for r in results(col)]
    first_v2 = versions.index("2.0.0")
    assert set(versions[:first_v2]) == {"1.0.0"} and set(versions[first_v2:]) == {"2.0.0"}, "mixed after the swap"
    assert "Traceback" not in err


def test_bad_rollouts_are_rejected_and_the_agent_keeps_publishing_on_v1(broker, tmp_path, kit):
    server, keys = kit["server"], kit["keys"]
    col = Collector(broker.port)
    agent = start_agent(config(tmp_path, broker.port, kit))
    v2 = kit["v2"]
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 5, 60)
        cases = []
        msg, raw = desired(v2, serve_as(server, v2, "badsig.espkg"), "dev1", keys, counter=101)
        doc = json.loads(raw)
        doc["sig"] = doc["sig"][:-4] + ("AAA=" if not doc["sig"].endswith("AAA=") else "BBB=")
        cases.append(("wrong signature", None, json.dumps(doc).encode(), "does not verify", "/badsig.espkg"))
        msg, raw = desired(v2, serve_as(server, v2, "stranger.espkg"), "dev1", kit["stranger"], counter=102)
        cases.append(("unknown key", None, raw, "does not trust", "/stranger.espkg"))
        manifest, digest, size = read_pack(v2)
        msg, raw = desired(v2, serve_as(server, v2, "badsha.espkg"), "dev1", keys, counter=103,
                           archive=Archive(sha256="0" * 64, size=size))
        cases.append(("bad sha256", msg.id, raw, "sha256", None))
        with open(v2, "rb") as f:
            (tmp_path / "short").write_bytes(f.read(size - 4096))
        msg, raw = desired(v2, serve_as(server, str(tmp_path / "short"), "short.espkg"), "dev1", keys, counter=104)
        cases.append(("truncated download", msg.id, raw, "shorter than", None))
        msg, raw = desired(v2, serve_as(server, v2, "stall-v2.espkg"), "dev1", keys, counter=105)
        cases.append(("stalled server", msg.id, raw, "after 2 tries", None))
        evil = evil_pack(v2, tmp_path / "evil.espkg")
        _, edigest, esize = read_pack(evil)
        msg, raw = desired(v2, serve_as(server, evil, "evil.espkg"), "dev1", keys, counter=106,
                           archive=Archive(sha256=edigest, size=esize))
        cases.append(("archive entry ../", msg.id, raw, "escapes|not a plain", None))
        msg, raw = desired(kit["permuted"], serve_as(server, kit["permuted"], "perm.espkg"), "dev1", keys,
                           counter=110)
        cases.append(("permuted labels", msg.id, raw, "agreement", None))
        msg, raw = desired(kit["engine"], serve_as(server, kit["engine"], "eng.espkg"), "dev1", keys, counter=130)
        cases.append(("does not load here", msg.id, raw, "tensorrt|TensorRT", None))
        msg, raw = desired(v2, serve_as(server, v2, "huge.espkg"), "dev1", keys, counter=107,
                           archive=Archive(sha256=digest, size=3 << 30))
        cases.append(("larger than max_package_bytes", msg.id, raw, "max_package_bytes", "/huge.espkg"))
        msg, raw = desired(v2, serve_as(server, v2, "old.espkg"), "dev1", keys, counter=108,
                           expires="2020-01-01T00:00:00.000Z")
        cases.append(("expired", msg.id, raw, "expired", "/old.espkg"))
        msg, raw = desired(v2, serve_as(server, v2, "other.espkg"), "dev2", keys, counter=109)
        cases.append(("another device's message", None, raw, "not dev1", "/other.espkg"))
        for what, mid, raw, why, never in cases:
            n = len(states(col))
            before = len(results(col))
            send(broker.port, raw)
            assert col.wait_for(lambda c: any(s["state"] == "rejected" and (mid is None or s.get("desired_id") == mid)
                                              for s in states(c)[n:]), 60), (what, states(col)[n:])
            st = [s for s in states(col)[n:] if s["state"] == "rejected"][-1]
            import re

            assert re.search(why, st["reason"]), (what, st["reason"])
            assert st["active"] == {"name": "digits-cnn", "version": "1.0.0", "counter": 0}, what
            if never:
                assert never not in FaultHandler.requests, "%s: downloaded before the signature was checked" % what
            assert col.wait_for(lambda c: len(results(c)) > before + 5, 30), "%s: results stopped" % what
            if what == "permuted labels":
                assert st["shadow"]["agreement"] < 0.5 and st["shadow"]["frames"] == 20
        assert agent.poll() is None
        assert set(r["model"]["version"] for r in results(col)) == {"1.0.0"}
    finally:
        err = stop(agent)
        col.close()
    assert not os.path.exists(str(tmp_path / "models" / "evil.txt")) and not os.path.exists(str(tmp_path / "evil.txt"))
    assert "Traceback" not in err


def test_a_candidate_that_fails_on_real_frames_after_the_swap_is_rolled_back(broker, tmp_path, kit):
    col = Collector(broker.port)
    agent = start_agent(config(tmp_path, broker.port, kit))
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 5, 60)
        msg, raw = desired(kit["failing"], serve_as(kit["server"], kit["failing"], "fail.espkg"), "dev1", kit["keys"],
                           policy=RolloutPolicy(shadow_frames=0, health_seconds=30))
        send(broker.port, raw)
        st = wait_state(col, lambda s: s.get("desired_id") == msg.id and s["state"] == "rolled_back")
        assert "failed at inference" in st["reason"] and st["active"]["version"] == "1.0.0"
        assert st["candidate"]["version"] == "2.2.0"
        n = len(results(col))
        assert col.wait_for(lambda c: len(results(c)) > n + 10, 30)
        assert agent.poll() is None
    finally:
        stop(agent)
        col.close()
    seq = [r["frame"] for r in results(col)]
    assert seq == list(range(seq[0], seq[0] + len(seq)))  # the frame that failed ran again on v1
    assert set(r["model"]["version"] for r in results(col)) == {"1.0.0"}
    # the same agent once more: a candidate that agrees in shadow but accepts nothing after the swap
    col = Collector(broker.port)
    agent = start_agent(config(tmp_path, broker.port, kit))
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 40, 60)  # a baseline: the uncertain share before
        msg, raw = desired(kit["never"], serve_as(kit["server"], kit["never"], "never.espkg"), "dev1", kit["keys"],
                           policy=RolloutPolicy(shadow_frames=10, health_seconds=60))
        send(broker.port, raw)
        st = wait_state(col, lambda s: s.get("desired_id") == msg.id and s["state"] == "rolled_back")
        assert "uncertain results surged" in st["reason"] and st["active"]["version"] == "1.0.0"
        n = len(results(col))
        assert col.wait_for(lambda c: len(results(c)) > n + 5 and results(c)[-1]["model"]["version"] == "1.0.0", 30)
    finally:
        stop(agent)
        col.close()
    assert "2.4.0" in {r["model"]["version"] for r in results(col)}  # it did run, then was rolled back
    # the rejected counter is remembered: the retained message is not tried again at the next start
    col = Collector(broker.port)
    agent = start_agent(config(tmp_path, broker.port, kit))
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 20, 60)
        assert set(r["model"]["version"] for r in results(col)) == {"1.0.0"}
        assert not any(s["state"] in ("downloading", "shadow") for s in states(col))
    finally:
        stop(agent)
        col.close()


@pytest.mark.parametrize("step", ["downloading", "verifying", "shadow", "swap"])
def test_sigkill_at_each_step_restarts_on_a_consistent_model_and_finishes(broker, tmp_path, kit, step):
    col = Collector(broker.port)
    cfg = config(tmp_path, broker.port, kit)
    agent = start_agent(cfg)
    name = "slow-v3.espkg" if step == "downloading" else "v3-%s.espkg" % step
    msg, raw = desired(kit["v3"], serve_as(kit["server"], kit["v3"], name), "dev1", kit["keys"],
                       policy=RolloutPolicy(shadow_frames=60 if step == "shadow" else 10, health_seconds=4))
    try:
        assert col.wait_for(lambda c: len(results(c)) >= 5, 60)
        send(broker.port, raw)
        want = {"downloading": lambda s: s["state"] == "downloading" and (s.get("progress") or 0) > 0.05,
                "verifying": lambda s: s["state"] in ("verifying", "shadow"),
                "shadow": lambda s: s["state"] == "shadow",
                "swap": lambda s: s["state"] == "active" and s.get("health") == "watching"}[step]
        wait_state(col, lambda s: s.get("desired_id") == msg.id and want(s))
    finally:
        agent.kill()
        agent.wait(10)
    agent = start_agent(cfg)
    try:
        st = wait_state(col, lambda s: s.get("desired_id") == msg.id and s["state"] == "active" and
                        s.get("health") == "passed", timeout=90)
        assert st["active"]["version"] == "3.0.0"
        assert col.wait_for(lambda c: results(c)[-1]["model"]["version"] == "3.0.0", 20)
    finally:
        stop(agent)
        col.close()
    pointer = json.load(open(str(tmp_path / "models" / "active.json")))
    assert pointer["active"]["counter"] == 200 and pointer["probation"] is None


def test_a_crash_loop_after_the_swap_comes_up_on_the_previous_model(broker, tmp_path, kit):
    col = Collector(broker.port)
    cfg = config(tmp_path, broker.port, kit, crash_starts=2)
    msg, raw = desired(kit["v3"], serve_as(kit["server"], kit["v3"], "v3-crash.espkg"), "dev1", kit["keys"],
                       policy=RolloutPolicy(shadow_frames=5, health_seconds=60))
    try:
        agent = start_agent(cfg)
        assert col.wait_for(lambda c: len(results(c)) >= 5, 60)
        send(broker.port, raw)
        wait_state(col, lambda s: s.get("desired_id") == msg.id and s["state"] == "active")
        for _ in range(2):  # dies twice inside the health window
            agent.kill()
            agent.wait(10)
            n = len(results(col))
            agent = start_agent(cfg)
            assert col.wait_for(lambda c: len(results(c)) > n + 3, 60)
        st = wait_state(col, lambda s: s["state"] == "rolled_back")
        assert "crash loop" in st["reason"] and st["active"]["version"] == "1.0.0"
        n = len(results(col))
        assert col.wait_for(lambda c: len(results(c)) > n + 5, 30)
        assert results(col)[-1]["model"]["version"] == "1.0.0"
        time.sleep(1.0)  # the retained desired message is not taken up again
        assert results(col)[-1]["model"]["version"] == "1.0.0"
    finally:
        stop(agent)
        col.close()


def test_canary_rejects_and_the_other_devices_never_receive_the_message(broker, tmp_path, kit):
    col = Collector(broker.port)
    agents = []
    try:
        for i in (1, 2, 3):
            home = tmp_path / ("dev%d" % i)
            home.mkdir()
            agents.append(start_agent(config(home, broker.port, kit, device="dev%d" % i, fps=10)))
        for i in (1, 2, 3):
            assert col.wait_for(lambda c: len(results(c, "dev%d" % i)) >= 3, 90)
        url = serve_as(kit["server"], kit["permuted"], "canary.espkg")
        cli = subprocess.run([sys.executable, "-m", "edgesight", "deploy", kit["permuted"], "--url", url,
                              "--all-online", "--canary", "1",
                              "--key", kit["keys"].priv, "--host", "127.0.0.1", "--port", str(broker.port),
                              "--shadow-frames", "20", "--health-seconds", "2", "--timeout", "90"],
                             capture_output=True, text=True, timeout=150)
        assert cli.returncode == 10, (cli.returncode, cli.stderr[-2000:])
        assert "canary dev1 rejected" in cli.stderr and "agreement" in cli.stderr
        time.sleep(1.0)
        desired_topics = {t for t, p, _ in col.messages if t.endswith("/model/desired")}
        assert desired_topics == {"edgesight/dev1/model/desired"}
        for i in (2, 3):
            assert not any(s["state"] in ("downloading", "shadow", "rejected") for s in states(col, "dev%d" % i))
        status = subprocess.run([sys.executable, "-m", "edgesight", "deploy", "status", "--host", "127.0.0.1",
                                 "--port", str(broker.port), "--json"], capture_output=True, text=True, timeout=60)
        rows = json.loads(status.stdout)
        assert rows["dev1"]["state"] == "rejected" and rows["dev2"]["state"] == "active"
        assert rows["dev3"]["status"] == "online"
    finally:
        for a in agents:
            stop(a)
        col.close()
