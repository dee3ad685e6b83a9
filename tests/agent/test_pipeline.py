"""The per-frame pipeline on its own: a real runtime (the example on ONNX Runtime) and a real outbox, no threads and
no broker. What it commits is read back from the outbox and checked against the contract's models."""
import base64
import io
import json
import os
import random
import time

import numpy as np
import pytest
from PIL import Image

from edgesight.agent.cameras import CameraConfig
from edgesight.agent.outbox import Outbox
from edgesight.agent.pipeline import FramePipeline, ModelView, Runner, Settings
from edgesight.agent.policy import PolicyManager
from edgesight.agent.prefetch import Prepared
from edgesight.agent.regions import MAIN, Preparer, View
from edgesight.agent.sources import Frame
from edgesight.agent.telemetry import Telemetry
from edgesight.calibration.images import list_images, load_image
from edgesight.calibration.preprocess import preprocess
from edgesight.contract import payloads
from edgesight.contract.policy import SamplingPolicy

from support import EXAMPLE

VAL = os.path.join(EXAMPLE, "images", "val")


def make(example_ort, tmp_path, threshold=0.8, per_class=None, hysteresis=1, policy=None, masks=None,
         publish_mode="every_frame", mask_units="pixels", temperature=1.0, calibrated=False, cameras=None):
    pkg, rt = example_ort
    outbox = Outbox(str(tmp_path / "outbox.db"))
    policy_mgr = PolicyManager(policy or SamplingPolicy(max_per_minute=None, min_gap=0, dedup={"enabled": False}),
                               "dev1", "edgesight", outbox)
    telemetry = Telemetry("dev1", "edgesight", [], outbox, None, None, policy_mgr)
    cams = cameras or [CameraConfig(name="front", source={"type": "folder", "path": VAL}, privacy_masks=masks or [],
                                    mask_units=mask_units)]
    view = ModelView(pkg.labels, pkg.manifest.output, {"name": "digits-cnn", "version": "1.0.0",
                                                        "sha256": "0123456789ab", "artifact": "model.fp32.onnx",
                                                        "runtime": "onnxruntime"}, temperature, calibrated)
    settings = Settings("dev1", "edgesight", 3, threshold, per_class or {}, hysteresis, publish_mode, 0.0)
    pipe = FramePipeline({MAIN: Runner(rt, view, settings)}, cams, outbox, policy_mgr, telemetry,
                         rng=random.Random(0))
    return pipe, outbox, telemetry, pkg.preprocess_for(rt)


def frames(label, n, spec, seq0=0):
    paths = [p for p, lbl in list_images(VAL) if lbl == label][:n]
    for i, p in enumerate(paths):
        img = load_image(p)
        yield Prepared("front", Frame(img, "rgb", time.time(), seq0 + i + 1), {MAIN: preprocess(img, spec)[None]},
                       [View(None, None, MAIN, 0)], 0.1)


def committed(outbox, kind):
    """What the outbox holds of ``kind``, once what is staged is committed (as it is within ``GROUP_DELAY``)."""
    outbox.flush()
    return [(r.topic, json.loads(r.payload)) for r in outbox.pending(10000) if r.kind == kind]


def test_results_are_committed_with_the_documented_payload(example_ort, tmp_path):
    pipe, outbox, telemetry, spec = make(example_ort, tmp_path)
    for item in frames("seven", 5, spec):
        pipe.process(item)
    results = committed(outbox, "result")
    assert len(results) == 5 and telemetry.processed == 5 and pipe.results_committed == 5
    topic, r = results[0]
    assert topic == "edgesight/dev1/front/result"
    payloads.Result.model_validate(r)  # what the collector side would accept
    assert r["label"] == "seven" and r["accepted"] and r["threshold"] == 0.8 and len(r["top_k"]) == 3
    assert [x["frame"] for _, x in results] == [1, 2, 3, 4, 5] and len({x["id"] for _, x in results}) == 5
    assert telemetry.counts == {"seven": 5} and telemetry.classes["seven"]["count"] == 5


def test_results_wait_for_a_group_commit_within_its_bounds_and_a_sample_commits_them_first(example_ort, tmp_path):
    from edgesight.agent import staging

    pipe, outbox, telemetry, spec = make(example_ort, tmp_path, policy=SamplingPolicy(enabled=False))
    woken = []
    outbox.on_put = lambda: woken.append(outbox.staged)  # the publisher's wake-up
    pipe._frame_s = 0.0  # the look ahead (the last frame's time) is not what is tested here
    delay = staging.GROUP_DELAY
    items = list(frames("seven", 20, spec))
    try:
        staging.GROUP_DELAY = 3600.0  # a slow test machine must not reach the delay: the row bound decides
        pipe.process(items[0])  # a result and the first state: offered to the publisher, not committed yet
        assert outbox.staged == 2 and woken == [2] and outbox.pending(10) == [] and pipe.results_committed == 0
        assert 3599 < pipe.commit_wait() <= 3600
        pipe.commit_overdue()
        assert outbox.staged == 2  # not due
        key = outbox.fresh(1)[0].id  # the publisher sent the result; the broker acknowledged it
        assert outbox.unstage(key) and outbox.staged == 1 and pipe.results_committed == 1
        n = 1
        while outbox.staged < staging.GROUP_ROWS - 1:  # the maximum rate: the next frame is always ready
            pipe.process(items[n], more_waiting=lambda: True)
            pipe._frame_s, n = 0.0, n + 1
        assert outbox.pending(100) == [] and pipe.results_committed == 1
        assert woken == [2]  # held for one hand-off to the publisher (its delay not reached): one wake-up a group
        pipe.process(items[n])  # the group is full: one commit, the acknowledged result not in it
        assert outbox.staged == 0 and [r.kind for r in outbox.pending(100)].count("result") == n
        assert pipe.results_committed == n + 1 and pipe.commit_wait() == float("inf")
        pipe.process(items[n + 1])
        assert outbox.staged == 1
        staging.GROUP_DELAY = 0.0  # no frame came for that long: committed between frames
        pipe.commit_overdue()
        assert outbox.staged == 0 and pipe.results_committed == n + 2
        before = len(woken)
        pipe.process(items[n + 2], more_waiting=lambda: True)  # past the delays: offered and committed at once
        assert outbox.staged == 0 and pipe.results_committed == n + 3 and len(woken) == before + 2  # offer, commit
    finally:
        staging.GROUP_DELAY = delay
    # an uncertain frame's sample is committed at once, after the results staged before it and its own result
    pipe2, outbox2, _, spec = make(example_ort, tmp_path / "two", threshold=1.0)
    for item in frames("three", 2, spec):
        pipe2.process(item)
    kinds = [r.kind for r in sorted(outbox2.pending(100), key=lambda r: r.id)]
    assert kinds == ["result", "sample", "result", "sample"] and outbox2.staged == 0


def test_thresholds_per_class_decide_accepted_and_uncertain_frames_become_samples(example_ort, tmp_path):
    pipe, outbox, telemetry, spec = make(example_ort, tmp_path, threshold=0.5, per_class={"three": 1.0})
    for item in frames("three", 4, spec):
        pipe.process(item)
    for item in frames("one", 2, spec, seq0=10):
        pipe.process(item)
    results = [r for _, r in committed(outbox, "result")]
    three = [r for r in results if r["label"] == "three"]
    assert len(three) == 4 and all(not r["accepted"] and r["threshold"] == 1.0 for r in three)
    assert all(r["accepted"] for r in results if r["label"] == "one")
    samples = [s for _, s in committed(outbox, "sample")]
    assert len(samples) == 4 and {s["reason"] for s in samples} == {"low_confidence"}
    assert {s["result_id"] for s in samples} == {r["id"] for r in three}  # each sample names its result
    payloads.Sample.model_validate(samples[0])
    assert telemetry.counts == {"_uncertain": 4, "one": 2}


def test_state_changes_only_after_hysteresis_agreeing_frames(example_ort, tmp_path):
    pipe, outbox, _, spec = make(example_ort, tmp_path, threshold=0.5, hysteresis=3)
    for item in list(frames("two", 2, spec)) + list(frames("five", 3, spec, seq0=10)):
        pipe.process(item)
    states = committed(outbox, "state")
    assert [s["label"] for _, s in states] == ["five"]  # two frames of "two" were not enough
    assert states[0][0] == "edgesight/dev1/front/state"
    assert all(r.retain for r in outbox.pending(100) if r.kind == "state")


def test_on_change_publishes_only_when_the_label_changes(example_ort, tmp_path):
    pipe, outbox, telemetry, spec = make(example_ort, tmp_path, threshold=0.5, publish_mode="on_change")
    for item in list(frames("four", 3, spec)) + list(frames("nine", 2, spec, seq0=10)):
        pipe.process(item)
    assert [r["label"] for _, r in committed(outbox, "result")] == ["four", "nine"]
    assert telemetry.processed == 5


def test_privacy_mask_blacks_out_the_sample_and_quota_limits_it(example_ort, tmp_path):
    policy = SamplingPolicy(strategies=[{"type": "low_confidence", "per_minute": 2}], max_per_minute=None,
                            min_gap=0, dedup={"enabled": False})
    pipe, outbox, _, spec = make(example_ort, tmp_path, threshold=1.0, policy=policy,
                                 masks=[[[0, 0], [1, 0], [1, 0.5], [0, 0.5]]], mask_units="relative")
    for item in frames("eight", 5, spec):
        pipe.process(item)
    samples = [s for _, s in committed(outbox, "sample")]
    assert len(samples) == 2  # the strategy's quota
    assert pipe.policy.sampler.skipped == {"quota": 3} and pipe.policy.sampler.taken == {"low_confidence": 2}
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(samples[0]["image"]["data"]))).convert("L"))
    h = img.shape[0]
    assert img[: h // 2 - 2].max() <= 8  # the masked top half is black (JPEG noise aside)
    assert img[h // 2 + 2:].max() > 100  # the digit below is still there


def test_scores_are_softmax_of_the_logits_over_the_artifacts_temperature(example_ort, tmp_path):
    """A calibrated artifact: the pipeline's scores are softmax(logits / T), and results say calibrated."""
    from edgesight.runtimes.postprocess import to_probabilities

    pkg, rt = example_ort
    pipe, outbox, _, spec = make(example_ort, tmp_path, threshold=1.0, temperature=1.7, calibrated=True)
    item = next(frames("eight", 1, spec))
    logits = next(iter(rt.infer(item.batches[MAIN]).values()))
    pipe.process(item)
    _, row = committed(outbox, "result")[0]
    expect = to_probabilities(logits, "logits", 1.7)[0]
    assert row["score"] == pytest.approx(float(expect.max()), abs=1e-5) and row["calibrated"] is True
    assert float(expect.max()) != pytest.approx(float(to_probabilities(logits, "logits")[0].max()), abs=1e-4)


# -- regions of interest ---------------------------------------------------------------------------------------
COUNTER = os.path.join(EXAMPLE, "images", "counter")  # frame n reads 37 + n // 3: tens at [16, 8, 48, 48], ones x 64
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class Counted(object):
    """The real runtime, with the batch size of every call written down."""

    def __init__(self, rt):
        self.rt, self.calls = rt, []

    def infer(self, batch):
        self.calls.append(batch.shape[0])
        return self.rt.infer(batch)


def decoded(image):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["data"]))).convert("RGB")).astype(int)


def test_each_region_is_classified_published_and_sampled_on_its_own_from_one_batch(example_ort, tmp_path):
    policy = SamplingPolicy(strategies=[{"type": "low_confidence"}], max_per_minute=None, min_gap=0,
                            dedup={"enabled": False})
    cam = CameraConfig(name="counter", source={"type": "folder", "path": COUNTER}, region_sample_frame=64,
                       regions=[{"name": "tens", "box": [16, 8, 48, 48]}, {"name": "ones", "box": [64, 8, 48, 48]}],
                       privacy_masks=[[[0, 0], [128, 0], [128, 4], [0, 4]],  # a strip above both wheels
                                      [[16, 8], [40, 8], [40, 56], [16, 56]]])  # the tens wheel's left half
    pipe, outbox, telemetry, spec = make(example_ort, tmp_path, threshold=1.0, policy=policy, cameras=[cam])
    counted = Counted(pipe.main.rt)
    pipe.runners[MAIN] = pipe.main._replace(rt=counted)
    prep = Preparer([cam], {MAIN: spec})
    frames_ = []
    for i, n in enumerate((0, 3, 6)):  # 37, 38, 39
        frame = Frame(load_image(os.path.join(COUNTER, "frame_%03d.png" % n)), "rgb", time.time(), i + 1)
        frames_.append(frame)
        pipe.process(Prepared("counter", frame, *prep("counter", frame), preprocess_ms=0.1))
    assert counted.calls == [2, 2, 2]  # one run of the model per frame, both regions in it
    assert telemetry.processed == 3
    results = committed(outbox, "result")
    assert [t for t, _ in results] == ["edgesight/dev1/counter/tens/result", "edgesight/dev1/counter/ones/result"] * 3
    assert [(r["region"], r["label"], r["frame"]) for _, r in results] == [
        ("tens", "three", 1), ("ones", "seven", 1), ("tens", "three", 2), ("ones", "eight", 2),
        ("tens", "three", 3), ("ones", "nine", 3)]
    for _, r in results:
        payloads.Result.model_validate(r)
    # threshold 1.0 accepts nothing: no state; every result is uncertain and sampled, each as its region's crop
    samples = committed(outbox, "sample")
    assert len(samples) == 6 and {t for t, _ in samples} == {"edgesight/dev1/counter/tens/sample",
                                                             "edgesight/dev1/counter/ones/sample"}
    for (topic, smp), frame in zip(samples, [f for f in frames_ for _ in (0, 1)]):
        payloads.Sample.model_validate(smp)
        x, y, w, h = smp["box"]
        assert (smp["image"]["width"], smp["image"]["height"]) == (w, h) == (48, 48)
        other = 64 if x == 16 else 16
        crop = decoded(smp["image"])
        masked = frame.image.astype(int)
        masked[:4], masked[8:56, 16:40] = 0, 0  # what the masks leave of the frame
        assert np.abs(crop - masked[y:y + h, x:x + w]).mean() < 4  # its own wheel, masked (JPEG noise aside)
        assert np.abs(crop - masked[y:y + h, other:other + w]).mean() > 20  # not the other one
        if smp["region"] == "tens":
            assert crop[:, :22].max() <= 24 and frame.image[8:56, 16:38].max() > 200  # the mask reached the crop
        ctx = decoded(smp["context"])
        assert ctx.shape == (32, 64, 3) and ctx[:2].max() <= 8  # the whole frame, reduced, the mask applied
        assert smp["region"] == topic.split("/")[-2] and smp["result_id"] in {r["id"] for _, r in results}


def test_each_region_has_its_own_state_and_a_camera_without_regions_is_as_before(example_ort, tmp_path):
    cams = [CameraConfig(name="counter", source={"type": "folder", "path": COUNTER},
                         regions=[{"name": "tens", "box": [16, 8, 48, 48]}, {"name": "ones", "box": [64, 8, 48, 48]}]),
            CameraConfig(name="front", source={"type": "folder", "path": VAL})]
    pipe, outbox, _, spec = make(example_ort, tmp_path, threshold=0.5, cameras=cams)
    prep = Preparer(cams, {MAIN: spec})
    for n in (6, 9, 12):  # 39, 40, 41
        frame = Frame(load_image(os.path.join(COUNTER, "frame_%03d.png" % n)), "rgb", time.time(), n)
        pipe.process(Prepared("counter", frame, *prep("counter", frame), preprocess_ms=0.1))
    for item in frames("six", 1, spec):
        outcome = pipe.process(item)
    assert outcome.label == "six"
    states = [(t, s["label"], s.get("region")) for t, s in committed(outbox, "state")]
    assert states == [("edgesight/dev1/counter/tens/state", "three", "tens"),
                      ("edgesight/dev1/counter/ones/state", "nine", "ones"),
                      ("edgesight/dev1/counter/tens/state", "four", "tens"),
                      ("edgesight/dev1/counter/ones/state", "zero", "ones"),
                      ("edgesight/dev1/counter/ones/state", "one", "ones"),
                      ("edgesight/dev1/front/state", "six", None)]
    _, whole = committed(outbox, "result")[-1]
    assert "region" not in whole and whole["camera"] == "front"  # a whole frame's payload is as it was
