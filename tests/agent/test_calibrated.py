"""The agent follows the package's calibration: scores are softmax(logits / T), each class runs at its fitted
threshold (1.0: never accepted), agent.yaml still overrides per class, and every result and stats message says
whether it is calibrated. A real broker for the agent (the pipeline's own temperature test is in test_pipeline.py).
The calibration is written into a copy of the example package here (no scipy: this runs on the device Pythons
too)."""
import os
import shutil

import numpy as np
import pytest

from edgesight.agent.pipeline import ModelView
from edgesight.agent.service import Agent
from edgesight.agent.config import load_config
from edgesight.runtimes import load_package
from edgesight.runtimes.manifest import Calibration, Thresholds
from edgesight.runtimes.package_write import with_artifacts, write_manifest
from edgesight.runtimes.postprocess import softmax, to_probabilities

from support import EXAMPLE, EXAMPLE_PACKAGE
from support.mqtt import Collector, agent_config, finish, folder_camera, start_agent

FIELD_TEST = os.path.join(EXAMPLE, "images", "field", "test")
TEMPERATURE = 1.7
FITTED = {"zero": 0.9, "one": 1.0, "two": 0.8, "three": 0.85, "four": 0.95, "five": 0.9, "six": 0.9,
          "seven": 0.9, "eight": 1.0, "nine": 0.9}


@pytest.fixture
def calibrated(tmp_path):
    dst = str(tmp_path / "pkg")
    shutil.copytree(EXAMPLE_PACKAGE, dst)
    pkg = load_package(dst)
    cal = Calibration(temperature=TEMPERATURE, thresholds=Thresholds(default=1.0, per_class=FITTED),
                      goal="precision >= 0.98 per class at confidence 0.9")
    write_manifest(dst, with_artifacts(pkg.manifest, [a.model_copy(update={"calibration": cal})
                                                      for a in pkg.manifest.artifacts]))
    return dst


def test_an_old_package_is_uncalibrated_and_a_calibrated_one_loads(calibrated):
    old = load_package(EXAMPLE_PACKAGE)
    assert old.manifest.schema_ == "edgesight.package/1"  # the bundled package predates calibration
    assert all(a.calibration is None for a in old.manifest.artifacts)
    assert old.manifest.thresholds_for(None) == (0.8, {})
    new = load_package(calibrated)
    assert new.manifest.schema_ == "edgesight.package/2"
    art = new.manifest.artifacts[0]
    assert art.calibration.temperature == TEMPERATURE
    assert new.manifest.thresholds_for(art.calibration) == (1.0, FITTED)


def test_temperature_applies_to_logits_and_to_probabilities():
    z = np.array([[4.0, 1.0, 0.0], [0.5, 0.4, -2.0]])
    np.testing.assert_allclose(to_probabilities(z, "logits", 2.0), softmax(z / 2.0), atol=1e-6)
    np.testing.assert_allclose(to_probabilities(softmax(z), "probabilities", 2.0), softmax(z / 2.0), atol=1e-6)
    np.testing.assert_allclose(to_probabilities(z, "logits"), softmax(z), atol=1e-7)
    with pytest.raises(ValueError):
        to_probabilities(z, "logits", 0.0)


def test_agent_settings_and_model_follow_the_package_and_config_overrides_per_class(calibrated, tmp_path):
    cfg = load_config(agent_config(tmp_path, 1883, package=calibrated,
                                   thresholds={"default": 0.5, "per_class": {"one": 0.97}}))
    agent = Agent(cfg)
    agent.load_model()
    try:
        assert isinstance(agent.model, ModelView) and agent.model.calibrated
        assert agent.model.temperature == TEMPERATURE
        s = agent.settings()
        assert s.per_class == dict(FITTED, one=0.97)  # agent.yaml's per_class on top of the fitted ones
        assert s.default_threshold == 0.5  # its default only for classes neither names
    finally:
        agent.rt.close()


def test_results_carry_calibrated_scores_and_fitted_thresholds_through_the_broker(broker, calibrated, tmp_path):
    sub = Collector(broker.port)
    cfg = agent_config(tmp_path, broker.port, package=calibrated, cameras=folder_camera(FIELD_TEST, fps=200,
                                                                                        loop=False))
    code, _, err = finish(start_agent(cfg), timeout=120)
    assert code == 0, err[-3000:]
    assert sub.wait_for(lambda s: s.saw_status("stopped"))
    results = [p for _, p, _ in sub.of("result")]
    assert len(results) > 200
    for r in results:
        assert r["calibrated"] is True
        assert r["threshold"] == FITTED[r["label"]]
        assert r["accepted"] == (r["score"] >= r["threshold"] and r["threshold"] < 1.0)
    assert not any(r["accepted"] for r in results if r["label"] in ("one", "eight"))  # threshold 1.0: never
    assert any(r["accepted"] for r in results) and not all(r["accepted"] for r in results)
    stats = [p for _, p, _ in sub.of("stats")]
    assert stats[-1]["calibrated"] is True
    share = stats[-1]["uncertain_share"]
    assert share["one"] == 1.0 and 0.0 <= share.get("two", 0.0) < 1.0
