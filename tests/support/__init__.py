"""What the tests share: paths, the real CLI in a subprocess, and the rule that a missing prerequisite fails in CI.
The broker, agent and collector helpers are in support.mqtt; small ONNX models in support.onnx_models; the fake
tensorrt module in support.fake_tensorrt; TLS test certificates in support.pki."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "digits")
EXAMPLE_PACKAGE = os.path.join(EXAMPLE, "package")
SUPPORT = os.path.dirname(os.path.abspath(__file__))


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def run_cli(*args, cwd=None, env=None, input=None):
    """Run the real ``edgesight`` command in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "edgesight"] + [str(a) for a in args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
                          env=None if env is None else dict(os.environ, **env), input=input)


def require_or_skip(ok: bool, what: str) -> None:
    """Skip locally with the reason; in CI (CI=true) a missing prerequisite fails instead, so skips never pass as
    green there."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail("%s is required in CI (.ci/run installs it)" % what)
    pytest.skip("%s is not installed here" % what)


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def wait_until(condition, timeout: float = 5.0, step: float = 0.005) -> None:
    end = time.time() + timeout
    while not condition() and time.time() < end:
        time.sleep(step)
    assert condition()
