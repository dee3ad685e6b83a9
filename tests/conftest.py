import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "digits")
EXAMPLE_PACKAGE = os.path.join(EXAMPLE, "package")


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if tensorrt_importable():
        return
    skip = pytest.mark.skip(reason="needs TensorRT hardware: the tensorrt module is not importable here")
    for item in items:
        if "device" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def example_package() -> str:
    return EXAMPLE_PACKAGE


@pytest.fixture
def package_copy(tmp_path) -> str:
    """A writable copy of the example package, to damage in tests."""
    dest = tmp_path / "pkg"
    shutil.copytree(EXAMPLE_PACKAGE, str(dest))
    return str(dest)


def run_cli(*args, cwd=None):
    """Run the real ``edgesight`` command in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "edgesight"] + [str(a) for a in args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)


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


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port (tests/mqtt_util.py), stopped afterwards."""
    from mqtt_util import Broker, mosquitto_binary

    require_or_skip(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()
