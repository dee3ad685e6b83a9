"""``edgesight doctor``: is this device ready to run the agent? Each check says ok / warn / fail / skip, what it
saw, and for a failure how to fix it. Nothing here crashes on a missing package: that is a finding."""
import importlib
import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
from typing import Any, Dict, List, NamedTuple, Optional

from .. import __version__


class Check(NamedTuple):
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example_package() -> Optional[str]:
    """The bundled example package (installed as package data, or in a source checkout)."""
    path = os.path.join(HERE, "examples", "digits", "package")
    return path if os.path.isfile(os.path.join(path, "edgesight.yaml")) else None


def _version(module: str) -> Optional[str]:
    try:
        mod = importlib.import_module(module)
    except Exception:  # absent or broken: listed as "-"; check_runtimes loads each runtime and reports the error
        return None
    return str(getattr(mod, "__version__", "installed"))


def check_python() -> List[Check]:
    ok = sys.version_info >= (3, 8)
    out = [Check("python", "ok" if ok else "fail", "Python %s on %s" % (platform.python_version(),
                                                                       platform.machine()),
                 "" if ok else "use Python 3.8 or newer")]
    versions = {name: _version(mod) for name, mod in (
        ("numpy", "numpy"), ("pydantic", "pydantic"), ("onnxruntime", "onnxruntime"),
        ("ai-edge-litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime"), ("tensorrt", "tensorrt"),
        ("opencv", "cv2"), ("paho-mqtt", "paho.mqtt"), ("pillow", "PIL"))}
    out.append(Check("packages", "ok", "edgesight %s; %s" % (__version__, ", ".join(
        "%s %s" % (k, v or "-") for k, v in versions.items()))))
    if versions["paho-mqtt"] is None:
        out.append(Check("mqtt client", "fail", "paho-mqtt is not installed", "pip install 'edgesight[agent]'"))
    return out


def check_runtimes(package: Optional[str]) -> List[Check]:
    """Actually load the (example) model on every runtime and run one frame."""
    import numpy as np

    from ..errors import EdgesightError
    from ..runtimes.package import ModelPackage
    from ..runtimes.registry import RUNTIME_NAMES, installed_runtimes

    pkg_path = package or example_package()
    if pkg_path is None:
        return [Check("runtimes", "skip", "no package to load (the example is not installed)",
                      "give --package or --config")]
    try:
        pkg = ModelPackage.load(pkg_path)
    except EdgesightError as exc:
        return [Check("runtimes", "fail", str(exc), "fix or re-copy the package")]
    out = []
    working = []
    installed = installed_runtimes()
    for name in RUNTIME_NAMES:
        arts = [i for i, a in enumerate(pkg.manifest.artifacts) if a.runtime == name]
        if name == "tensorrt" and name in installed:  # an engine build takes minutes: the agent does it
            out.append(Check("runtime tensorrt", "ok", "TensorRT %s importable; engines are built from the Q/DQ "
                             "ONNX when the agent starts" % _version("tensorrt")))
            continue
        if name not in installed:
            extra = {"onnxruntime": "onnx", "tflite": "tflite", "tensorrt": "tensorrt"}[name]
            out.append(Check("runtime %s" % name, "warn", "not installed",
                             "pip install 'edgesight[%s]'" % extra if name != "tensorrt" else
                             "TensorRT comes from JetPack: venv with --system-site-packages (docs/jetson.md)"))
            continue
        if not arts:
            out.append(Check("runtime %s" % name, "skip", "installed; %s has no artifact for it" % pkg.manifest.name))
            continue
        try:
            t0 = time.perf_counter()
            with pkg.open_runtime(artifact_index=arts[0]) as rt:
                rt.infer(np.zeros(pkg.preprocess.input_shape(), np.float32))
            working.append(name)
            out.append(Check("runtime %s" % name, "ok", "loaded %s and ran a frame in %.0f ms" % (
                pkg.manifest.artifacts[arts[0]].file, 1000 * (time.perf_counter() - t0))))
        except EdgesightError as exc:
            out.append(Check("runtime %s" % name, "fail", str(exc), "reinstall the runtime or the package"))
    if not working:
        out.append(Check("runtimes", "fail", "no runtime can run %s here" % pkg.manifest.name,
                         "pip install 'edgesight[onnx]' (x86, Jetson) or 'edgesight[tflite]' (Raspberry Pi)"))
    return out


def check_platform() -> List[Check]:
    out = []
    tegra = "/etc/nv_tegra_release"
    if os.path.isfile(tegra):
        with open(tegra) as f:
            out.append(Check("jetson", "ok", "L4T %s" % f.readline().strip()))
    model = "/proc/device-tree/model"
    if os.path.isfile(model):
        with open(model, "rb") as f:
            text = f.read().decode("utf-8", "replace").strip("\x00 \n")
        out.append(Check("board", "ok", text))
    from ..runtimes.cuda_device import gpu_identity

    ident = gpu_identity()
    trt = _version("tensorrt")
    if ident is not None:
        out.append(Check("gpu", "ok", "%s, compute capability %s; TensorRT %s" % (ident.name, ident.compute,
                                                                                   trt or "not installed")))
    else:
        out.append(Check("gpu", "skip", "no CUDA GPU visible (cuda-python/pycuda missing or no GPU)%s"
                         % ("; TensorRT %s" % trt if trt else "")))
    return out


def check_cameras(paths: Optional[List[str]] = None) -> List[Check]:
    import glob

    devices = paths if paths is not None else sorted(glob.glob("/dev/video*"))
    if not devices:
        return [Check("cameras", "warn", "no /dev/video* devices", "plug in a camera, or use a url/folder source")]
    out = []
    for dev in devices:
        ok = os.access(dev, os.R_OK | os.W_OK)
        out.append(Check("camera %s" % dev, "ok" if ok else "fail",
                         "this user may open it" if ok else "permission denied for this user",
                         "" if ok else "add the user to the 'video' group (the systemd unit does: "
                                       "SupplementaryGroups=video)"))
    return out


def _first_frame(source_cfg: Any, timeout: float) -> Any:
    """A frame from the camera, or a string saying why there is none (in a thread: a camera may hang)."""
    import threading

    from .sources import make_source

    got: List[Any] = ["no frame within %.0f s" % timeout]

    def read() -> None:
        src = make_source(source_cfg)
        try:
            src.open()
            frame = src.read()
            got[0] = frame if frame is not None else "the source ended before its first frame"
        except Exception as exc:  # whatever the camera says is the finding
            got[0] = "%s: %s" % (type(exc).__name__, exc)
        finally:
            try:
                src.close()
            except Exception:  # noqa: BLE001 the finding is what the camera did on open and read (kept above);
                pass  # a source that also fails to close changes nothing about whether its boxes fit

    t = threading.Thread(target=read, name="doctor-camera", daemon=True)
    t.start()
    t.join(timeout)
    return got[0]


def check_regions(cameras: List[Any], timeout: float = 10.0) -> List[Check]:
    """One frame from each camera with regions of interest: does every box fit it (the agent would skip one that
    does not, and say so only once frames arrive)?"""
    from .regions import box_pixels

    out = []
    for cam in cameras:
        if not cam.regions:
            continue
        name = "regions %s" % cam.name
        frame = _first_frame(cam.source, timeout)
        if isinstance(frame, str):
            out.append(Check(name, "warn", "no frame to check the boxes against (%s)" % frame,
                             "check the camera's source; the boxes are checked when frames arrive"))
            continue
        h, w = frame.image.shape[:2]
        bad = []
        for r in cam.regions:
            try:
                box_pixels(r.box, cam.region_units, h, w)
            except ValueError as exc:
                bad.append("%s: %s" % (r.name, exc))
        out.append(Check(name, "fail", "; ".join(bad), "fix the boxes in cameras[].regions "
                                                        "(docs/agent-config.md#regions-of-interest)") if bad else
                   Check(name, "ok", "%d region(s) inside the %dx%d frame" % (len(cam.regions), w, h)))
    return out


def check_broker(mqtt_cfg: Any, device_id: str = "doctor", timeout: float = 5.0) -> Check:
    """A real MQTT handshake with the agent's own client set-up (the same TLS settings and credentials)."""
    from ..contract.client import make_client
    from ..errors import EdgesightError
    from .config import read_password

    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return Check("broker", "skip", "paho-mqtt not installed", "pip install 'edgesight[agent]'")
    target = "%s:%d" % (mqtt_cfg.host, mqtt_cfg.port)
    result: Dict[str, Any] = {}
    try:
        settings = mqtt_cfg.settings(device_id, read_password(mqtt_cfg))
        client = make_client(settings._replace(client_id="edgesight-doctor-%d" % os.getpid()))
        client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
        client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=10)
    except EdgesightError as exc:  # an unreadable password file, a CA that is not PEM, ...
        return Check("broker", "fail", str(exc), "fix the mqtt section of the config")
    except ssl.SSLError as exc:
        return Check("broker", "fail", "TLS handshake with %s failed: %s" % (target, exc),
                     "check mqtt.tls.ca_file is the CA that signed the broker's certificate, and that mqtt.host "
                     "matches the certificate's name")
    except OSError as exc:
        return Check("broker", "fail", "cannot reach %s: %s" % (target, exc),
                     "check mqtt.host/port, that the broker runs and that no firewall blocks it")
    client.loop_start()
    end = time.time() + timeout
    while "rc" not in result and time.time() < end:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    rc = result.get("rc")
    if rc is None:
        return Check("broker", "fail", "%s accepted TCP but sent no CONNACK within %.0f s" % (target, timeout),
                     "is it an MQTT port? TLS on a plain port (or the reverse) looks like this")
    if getattr(rc, "is_failure", False):
        return Check("broker", "fail", "%s refused the connection: %s" % (target, rc),
                     "check mqtt.username and the password file/env (and the broker's ACL)")
    return Check("broker", "ok", "MQTT %s handshake with %s%s%s" % (
        "5" if mqtt_cfg.protocol == "5" else "3.1.1", target, " over TLS" if mqtt_cfg.tls else "",
        " as %s" % mqtt_cfg.username if mqtt_cfg.username else ""))


def check_outbox(path: str, min_free_mb: int = 100) -> Check:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        return Check("outbox", "fail", "%s is not writable by this user" % probe,
                     "run as the service user, or let systemd create it (StateDirectory=edgesight)")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return Check("outbox", "fail", "cannot write in %s: %s" % (probe, exc), "check the filesystem")
    free = shutil.disk_usage(probe).free // (1 << 20)
    if free < min_free_mb:
        return Check("outbox", "warn", "%s writable, only %d MiB free" % (probe, free), "free disk space")
    return Check("outbox", "ok", "%s writable, %d MiB free" % (probe, free))


def check_clock() -> Check:
    if os.path.exists("/run/systemd/timesync/synchronized"):
        return Check("clock", "ok", "synchronised (systemd-timesyncd)")
    if shutil.which("timedatectl") and os.path.isdir("/run/systemd/system"):
        import subprocess

        res = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
        if res.stdout.strip() == "yes":
            return Check("clock", "ok", "synchronised (NTP)")
        return Check("clock", "fail", "not synchronised: result timestamps will be wrong",
                     "enable NTP: timedatectl set-ntp true")
    return Check("clock", "warn", "cannot tell whether the clock is synchronised (no systemd here)",
                 "make sure NTP/chrony runs")


def check_package_fits(package: str, runtime: str) -> Check:
    from ..errors import EdgesightError
    from ..runtimes.package import ModelPackage

    try:
        pkg = ModelPackage.load(package)
        choice = pkg.artifact_for(runtime)
    except EdgesightError as exc:
        return Check("package", "fail", str(exc), "convert the model for this device's runtime (edgesight convert)")
    return Check("package", "ok", "%s %s: this device runs %s on %s" % (pkg.manifest.name, pkg.manifest.version,
                                                                      choice.artifact.file, choice.runtime))


def run(config_path: Optional[str] = None, package: Optional[str] = None) -> List[Check]:
    from ..errors import EdgesightError
    from .config import load_config

    checks: List[Check] = []
    checks += check_python()
    cfg = None
    if config_path:
        try:
            cfg = load_config(config_path)
            checks.append(Check("config", "ok", "%s is valid" % config_path))
        except EdgesightError as exc:
            checks.append(Check("config", "fail", str(exc), "fix the config (docs/agent-config.md)"))
    pkg = package or (cfg.package if cfg else None)
    checks += check_runtimes(pkg)
    checks += check_platform()
    checks += check_cameras()
    if cfg is not None:
        checks += check_regions(cfg.cameras)
        checks.append(check_broker(cfg.mqtt, cfg.device_id))
        checks.append(check_outbox(cfg.outbox.path))
        checks.append(check_package_fits(cfg.package, cfg.runtime))
    else:
        checks.append(Check("broker", "skip", "no --config", "give --config to test the broker"))
    checks.append(check_clock())
    return checks
