"""The systemd unit (systemd-analyze), the installer (into a staging root) and `edgesight doctor`."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from edgesight.errors import ConfigError
from support import ROOT, require_or_skip, run_cli
from support.mqtt import Broker, agent_config, mosquitto_binary

UNIT = os.path.join(ROOT, "systemd", "edgesight-agent.service")


@pytest.fixture
def rendered_unit(tmp_path):
    require_or_skip(shutil.which("systemd-analyze") is not None, "systemd-analyze (apt-get install systemd)")
    path = tmp_path / "edgesight-agent.service"
    with open(UNIT) as f:
        path.write_text(f.read().replace("@EDGESIGHT@", "/usr/bin/true"))
    return str(path)


def test_unit_verifies_cleanly(rendered_unit):
    proc = subprocess.run(["systemd-analyze", "verify", rendered_unit], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout


def test_unit_security_exposure_at_most_2(rendered_unit):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", rendered_unit], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout).group(1))
    assert score <= 2.0, proc.stdout[-3000:]


def test_unit_has_what_the_agent_needs():
    with open(UNIT) as f:
        text = f.read()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=",
                 "User=edgesight", "SupplementaryGroups=video render", "StateDirectory=edgesight",
                 "CacheDirectory=edgesight", "DevicePolicy=closed", "DeviceAllow=char-video4linux rw",
                 "DeviceAllow=/dev/nvmap rw"):
        assert line in text, line
    active = [ln.split("=")[0] for ln in text.splitlines() if ln and not ln.startswith("#")]
    for forbidden in ("PrivateDevices", "ProcSubset", "MemoryDenyWriteExecute"):  # break cameras/GPU/CUDA
        assert forbidden not in active


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_install_into_a_staging_root_is_idempotent_and_uninstalls(tmp_path):
    root = tmp_path / "root"
    first = run_cli("service", "install", "--root", root, "--executable", "/opt/edgesight/bin/edgesight",
                    "--device-id", "cam-7")
    assert first.returncode == 0, first.stderr
    unit = root / "etc/systemd/system/edgesight-agent.service"
    cfg = root / "etc/edgesight/agent.yaml"
    env = root / "etc/edgesight/agent.env"
    text = unit.read_text()
    assert "ExecStart=/opt/edgesight/bin/edgesight agent --config /etc/edgesight/agent.yaml" in text
    assert "User=edgesight" in text and "Group=edgesight" in text and "@EDGESIGHT@" not in text
    assert mode(str(unit)) == 0o644 and mode(str(cfg)) == 0o640 and mode(str(env)) == 0o640
    for d in ("etc/edgesight", "var/lib/edgesight", "var/cache/edgesight"):
        assert mode(str(root / d)) == 0o750
    assert "device_id: cam-7" in cfg.read_text()
    assert "systemd is not running here" in first.stdout  # staging: no systemctl
    cfg.write_text(cfg.read_text() + "# edited by the operator\n")
    second = run_cli("service", "install", "--root", root, "--executable", "/opt/edgesight/bin/edgesight")
    assert second.returncode == 0 and "wrote" not in second.stdout, second.stdout  # nothing rewritten
    assert cfg.read_text().endswith("# edited by the operator\n")  # config never overwritten
    other = run_cli("service", "install", "--root", root, "--user", "camsvc", "--executable", "/usr/bin/edgesight")
    assert "wrote     %s" % unit in other.stdout and "User=camsvc" in unit.read_text()  # a changed unit is rewritten
    gone = run_cli("service", "uninstall", "--root", root)
    assert gone.returncode == 0 and not unit.exists() and cfg.exists()
    purge = run_cli("service", "uninstall", "--root", root, "--purge")
    assert purge.returncode == 0 and not (root / "etc/edgesight").exists()
    assert not (root / "var/lib/edgesight").exists()


def test_skeleton_config_validates(tmp_path):
    root = tmp_path / "root"
    assert run_cli("service", "install", "--root", root).returncode == 0
    proc = run_cli("agent", "--config", root / "etc/edgesight/agent.yaml", "--check-config")
    assert proc.returncode == 0, proc.stderr


# -- doctor ------------------------------------------------------------------------------------------------------
def doctor(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "edgesight", "doctor", "--json"] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env=dict(os.environ, **(env or {})))
    report = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in report["checks"]}, report


def test_doctor_with_a_reachable_broker(broker, tmp_path):
    code, checks, report = doctor("--config", agent_config(tmp_path, broker.port))
    assert checks["broker"]["status"] == "ok" and "handshake" in checks["broker"]["detail"]
    assert checks["runtime onnxruntime"]["status"] == "ok" and checks["runtime tflite"]["status"] == "ok"
    assert checks["outbox"]["status"] == "ok" and checks["package"]["status"] == "ok"
    assert code == report["failures"] == sum(c["status"] == "fail" for c in checks.values()) == 0


def test_doctor_checks_region_boxes_against_a_frame_of_the_camera(tmp_path):
    counter = os.path.join(ROOT, "examples", "digits", "images", "counter")  # 128x64 frames
    cam = {"name": "counter", "source": {"type": "folder", "path": counter},
           "regions": [{"name": "tens", "box": [16, 8, 48, 48]}, {"name": "far", "box": [150, 0, 40, 40]}]}
    gone = {"name": "gone", "source": {"type": "folder", "path": str(tmp_path / "nowhere")},
            "regions": [{"name": "a", "box": [0, 0, 0.5, 0.5]}], "region_units": "relative"}
    code, checks, _ = doctor("--config", agent_config(tmp_path, 1, cameras=[cam, gone]))
    c = checks["regions counter"]
    assert c["status"] == "fail" and "far: box [150, 0, 40, 40] (pixels) reaches x=190" in c["detail"], c
    assert "tens" not in c["detail"] and "regions-of-interest" in c["fix"] and code >= 1
    assert checks["regions gone"]["status"] == "warn" and "does not exist" in checks["regions gone"]["detail"]
    cam["regions"] = cam["regions"][:1]
    _, checks, _ = doctor("--config", agent_config(tmp_path, 1, cameras=[cam]))
    assert checks["regions counter"] == {"name": "regions counter", "status": "ok",
                                         "detail": "1 region(s) inside the 128x64 frame", "fix": ""}


def test_doctor_explains_a_tls_failure(tmp_path):
    require_or_skip(mosquitto_binary() is not None and shutil.which("openssl"), "mosquitto and openssl")
    from support.pki import openssl

    d = str(tmp_path)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost", "-keyout", "srv.key", "-out", "srv.pem", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
            "-keyout", "o.key", "-out", "other.pem", cwd=d)
    b = Broker(tmp_path / "b", tls={"ca": os.path.join(d, "srv.pem"), "cert": os.path.join(d, "srv.pem"),
                                    "key": os.path.join(d, "srv.key")}).start()
    try:
        cfg = agent_config(tmp_path, b.port, mqtt={"host": "localhost", "port": b.port,
                                                   "tls": {"ca_file": os.path.join(d, "other.pem")}})
        code, checks, _ = doctor("--config", cfg)
        broker_check = checks["broker"]
        assert broker_check["status"] == "fail" and "TLS handshake" in broker_check["detail"]
        assert "certificate verify failed" in broker_check["detail"] and "ca_file" in broker_check["fix"]
        assert code >= 1
    finally:
        b.stop()


def test_doctor_explains_an_auth_failure(tmp_path):
    require_or_skip(mosquitto_binary() is not None and shutil.which("mosquitto_passwd"), "mosquitto_passwd")
    pw = str(tmp_path / "passwd")
    open(pw, "w").close()
    subprocess.run(["mosquitto_passwd", "-b", pw, "dev1", "right"], check=True, timeout=30)
    b = Broker(tmp_path / "b", extra_conf="allow_anonymous false\npassword_file %s\n" % pw).start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("wrong")
        cfg = agent_config(tmp_path, b.port, mqtt={"host": "127.0.0.1", "port": b.port, "username": "dev1",
                                                   "password_file": str(secret)})
        code, checks, _ = doctor("--config", cfg)
        assert checks["broker"]["status"] == "fail" and "refused the connection" in checks["broker"]["detail"]
        assert "password" in checks["broker"]["fix"] and code >= 1
    finally:
        b.stop()


def test_doctor_reports_missing_runtimes_without_crashing(tmp_path):
    shadow = tmp_path / "shadow"
    for mod in ("onnxruntime", "ai_edge_litert", "tflite_runtime", "tensorflow"):
        (shadow / mod).mkdir(parents=True)
        (shadow / mod / "__init__.py").write_text("raise ImportError('%s is broken on this device')\n" % mod)
    code, checks, report = doctor(env={"PYTHONPATH": str(shadow)})
    assert checks["runtime onnxruntime"]["status"] == "fail"
    assert "pip install 'edgesight[onnx]'" in checks["runtime onnxruntime"]["detail"]
    assert checks["runtimes"]["status"] == "fail" and "no runtime" in checks["runtimes"]["detail"]
    assert code == report["failures"] >= 3


@pytest.mark.parametrize("env,expected", [
    # (in_venv, externally_managed, system_tensorrt, sees_system_packages)
    ((False, True, False, True), "externally managed"),            # Pi OS trixie / Ubuntu 24.04 system Python
    ((False, True, True, True), "--system-site-packages"),         # JetPack 7 system Python: the venv must see TRT
    ((True, True, True, False), "cannot see it"),                  # a Jetson venv made without system packages
    ((True, True, True, True), None),                              # the guide's Jetson venv
    ((True, True, False, False), None),                            # the guide's Pi venv
    ((False, False, False, True), None),                           # JetPack 5's Python 3.8: not externally managed
])
def test_service_install_refuses_a_python_a_device_should_not_run(env, expected):
    from edgesight.agent import environment

    why = environment.problem(environment.PythonEnvironment(*env))
    assert (why is None) if expected is None else (expected in why and environment.VENV in why)


def test_service_install_stops_before_writing_anything_on_an_externally_managed_python(monkeypatch, tmp_path):
    from edgesight.agent import environment, install

    monkeypatch.setattr(environment, "probe", lambda: environment.PythonEnvironment(False, True, False, True))
    with pytest.raises(ConfigError, match="PEP 668"):
        install.install(root=str(tmp_path / "root"))
    assert not (tmp_path / "root").exists()
    monkeypatch.setattr(environment, "probe", lambda: environment.PythonEnvironment(True, True, False, False))
    report = install.install(root=str(tmp_path / "root"))
    assert any("the unit runs this venv's edgesight" in line for line in report)
    unit = (tmp_path / "root/etc/systemd/system/edgesight-agent.service").read_text()
    assert "ExecStart=%s agent" % os.path.join(os.path.dirname(sys.executable), "edgesight") in unit
