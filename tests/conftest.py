"""Fixtures and collection rules for every test folder (tests/<part>/ mirrors the code's parts; shared helpers live
in tests/support/). Markers: ``device`` (real TensorRT hardware; skipped where tensorrt is not importable) and
``broker`` (given to every test that starts a mosquitto: ``pytest -m 'not broker'`` runs the rest)."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import support` from every test folder

from edgesight.runtimes import load_package  # noqa: E402
from support import EXAMPLE_PACKAGE, require_or_skip, tensorrt_importable  # noqa: E402

BROKER_FIXTURES = {"broker", "pki"}
BROKER_MODULES = {"test_agent_mqtt", "test_sampling_mqtt", "test_agent_security", "test_collector",
                  "test_agent_to_collector", "test_poison"}


@pytest.fixture(autouse=True)
def _reap_collectors():
    """The finally for every test that starts `edgesight collect`: a failing test leaves no process running."""
    yield
    fleet = sys.modules.get("support.fleet")  # only tests that imported it can have started one
    if fleet is not None:
        fleet.reap()


def pytest_collection_modifyitems(config, items):
    skip = None if tensorrt_importable() else pytest.mark.skip(
        reason="needs TensorRT hardware: the tensorrt module is not importable here")
    for item in items:
        if skip is not None and "device" in item.keywords:
            item.add_marker(skip)
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in BROKER_MODULES:
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def example_package() -> str:
    return EXAMPLE_PACKAGE


@pytest.fixture
def package_copy(tmp_path) -> str:
    """A writable copy of the example package, to damage in tests."""
    dest = tmp_path / "pkg"
    shutil.copytree(EXAMPLE_PACKAGE, str(dest))
    return str(dest)


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port (tests/support/mqtt.py), stopped afterwards."""
    from support.mqtt import Broker, mosquitto_binary

    require_or_skip(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def example_ort():
    """The example package and its FP32 ONNX opened on ONNX Runtime in the model's own layout, as the agent opens it
    (one per test module)."""
    pkg = load_package(EXAMPLE_PACKAGE)
    rt = pkg.open_runtime("onnxruntime", input_layout="native")
    yield pkg, rt
    rt.close()
