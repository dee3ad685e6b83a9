"""Managed tool environments for converters whose dependencies clash with a modern environment.

onnx2tf pins TensorFlow 2.19, numpy 1.26.4, onnx 1.19.1 and protobuf 4.25.5, so it lives in its own virtual
environment and runs as a subprocess. ``edgesight toolchain install tflite`` creates it; CI does the same.
Location: ``$EDGESIGHT_TOOLCHAINS`` or ``$XDG_CACHE_HOME/edgesight/toolchains`` (default ``~/.cache/...``).
"""
import logging
import os
import subprocess
import sys
from typing import Dict, List, NamedTuple, Optional

from ..errors import ConversionError
from ..files import cache_dir

log = logging.getLogger(__name__)


class ToolchainSpec(NamedTuple):
    name: str
    requirements: List[str]
    executable: str  # the command the converter runs, inside the venv's bin/
    purpose: str


# What pip resolved for onnx2tf on Python 3.11 here, pinned so that conversions are reproducible.
TOOLCHAINS: Dict[str, ToolchainSpec] = {
    "tflite": ToolchainSpec(
        "tflite",
        ["onnx2tf==1.29.24", "tensorflow==2.19.0", "tf-keras==2.19.0", "onnx==1.19.1", "onnxruntime==1.23.0",
         "onnxsim==0.4.36", "onnx-graphsurgeon==0.5.8", "sng4onnx==2.0.1", "psutil==5.9.5", "numpy==1.26.4",
         "protobuf==4.25.5", "ai-edge-litert==2.1.0", "h5py==3.11.0"],
        "onnx2tf", "ONNX -> TFLite (INT8) with onnx2tf"),
}


def toolchains_dir() -> str:
    return cache_dir("toolchains", "EDGESIGHT_TOOLCHAINS")


def _spec(name: str) -> ToolchainSpec:
    try:
        return TOOLCHAINS[name]
    except KeyError:
        raise ConversionError("unknown toolchain %r; known: %s" % (name, ", ".join(TOOLCHAINS)))


def venv_dir(name: str) -> str:
    return os.path.join(toolchains_dir(), _spec(name).name)


def tool_path(name: str) -> Optional[str]:
    """The toolchain's executable, or None when it is not installed."""
    path = os.path.join(venv_dir(name), "bin", _spec(name).executable)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def require(name: str) -> str:
    path = tool_path(name)
    if path is None:
        raise ConversionError("the %s toolchain (%s) is not installed in %s. Install it with: "
                              "edgesight toolchain install %s" % (name, _spec(name).purpose, venv_dir(name), name))
    return path


def tool_env(name: str) -> Dict[str, str]:
    """Environment for running a toolchain's tools: its bin/ first on PATH (onnx2tf calls onnxsim by name), quiet TF,
    no GPU."""
    env = dict(os.environ)
    env["PATH"] = os.path.join(venv_dir(name), "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = env.get("EDGESIGHT_TOOLCHAIN_GPU", "")
    env.pop("PYTHONPATH", None)
    return env


def install(name: str, python: Optional[str] = None, upgrade: bool = False, timeout: int = 1800) -> str:
    """Create (or complete) the toolchain's venv and install its pinned requirements. Idempotent."""
    spec = _spec(name)
    target = venv_dir(name)
    py = os.path.join(target, "bin", "python")
    if not os.path.isfile(py):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        log.info("creating %s", target)
        _run([python or sys.executable, "-m", "venv", target], timeout)
        _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], timeout)
    cmd = [py, "-m", "pip", "install", "-q"] + (["--upgrade"] if upgrade else []) + spec.requirements
    log.info("installing %s", " ".join(spec.requirements))
    _run(cmd, timeout)
    return require(name)


def _run(cmd: List[str], timeout: int) -> None:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConversionError("timed out after %d s: %s" % (timeout, " ".join(cmd)))
    if proc.returncode != 0:
        tail = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-15:]
        raise ConversionError("command failed (exit %d): %s\n%s" % (proc.returncode, " ".join(cmd), "\n".join(tail)))


def versions(name: str) -> Dict[str, str]:
    """Installed versions of the toolchain's pinned packages (empty when not installed)."""
    py = os.path.join(venv_dir(name), "bin", "python")
    if not os.path.isfile(py):
        return {}
    wanted = [r.split("==")[0] for r in _spec(name).requirements]
    code = ("import importlib.metadata as m, json\nout = {}\nfor n in %r:\n    try:\n        out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError:\n        pass\nprint(json.dumps(out))" % (wanted,))
    proc = subprocess.run([py, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    import json

    return json.loads(proc.stdout.decode() or "{}") if proc.returncode == 0 else {}
