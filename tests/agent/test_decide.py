"""The decisions stage (agent/decide.py): a frame's decisions on their own thread while the next frame is inferred,
in frame order, with the models the frame ran on; decided in the caller's thread when the pipeline is not at its
maximum rate. A real pipeline (the example on ONNX Runtime, a real outbox), no broker."""
import sys
import threading
import time

import pytest

from edgesight.agent.decide import DecisionStage
from edgesight.agent.outbox import Outbox
from edgesight.agent.pipeline import ModelView, Runner
from edgesight.agent.policy import PolicyManager
from edgesight.agent.regions import MAIN
from edgesight.agent.service import Agent
from edgesight.agent.telemetry import Telemetry
from edgesight.contract.policy import SamplingPolicy
from edgesight.errors import InferenceError

from test_pipeline import committed, frames, make


def test_at_the_maximum_rate_frames_are_decided_on_the_stage_in_frame_order(example_ort, tmp_path):
    pipe, outbox, telemetry, spec = make(example_ort, tmp_path)
    stage = DecisionStage(pipe.decide, lambda: True).start()  # the next frame is always prepared
    try:
        outcomes = []
        for item in list(frames("seven", 6, spec)) + list(frames("one", 4, spec, seq0=6)):
            inferred = pipe.infer(item)
            outcomes.append(inferred.outcome)
            stage.submit(inferred, timeout=30)
    finally:
        stage.stop(30)
    assert stage.failed is None and stage.decided == 10 and stage.inline == 0 and stage.idle()
    results = [r for _, r in committed(outbox, "result")]
    assert [r["frame"] for r in results] == list(range(1, 11))
    assert [r["label"] for r in results] == [o.label for o in outcomes] == ["seven"] * 6 + ["one"] * 4
    assert [round(r["score"], 6) for r in results] == [round(o.score, 6) for o in outcomes]
    states = [s for _, s in committed(outbox, "state")]
    assert [s["label"] for s in states] == ["seven", "one"]  # the tracker saw the frames in order
    assert telemetry.processed == 10 and sum(telemetry.counts.values()) == 10


def test_below_the_maximum_rate_a_frame_is_decided_in_the_calling_thread(example_ort, tmp_path):
    pipe, outbox, _, spec = make(example_ort, tmp_path)
    seen = []

    def decide(inferred, more):
        seen.append(threading.current_thread().name)
        pipe.decide(inferred, more)

    stage = DecisionStage(decide, lambda: False).start()
    try:
        for item in frames("seven", 3, spec):
            stage.submit(pipe.infer(item), timeout=30)
    finally:
        stage.stop(30)
    assert stage.inline == 3 and stage.decided == 0 and set(seen) == {threading.current_thread().name}
    assert len(committed(outbox, "result")) == 3


def test_a_frame_is_decided_with_the_model_it_ran_on_even_after_a_swap(example_ort, tmp_path):
    pipe, outbox, _, spec = make(example_ort, tmp_path)
    old = pipe.main
    item = next(frames("seven", 1, spec))
    inferred = pipe.infer(item)
    relabelled = ModelView(["x%d" % i for i in range(len(old.model.labels))], old.model.output,
                           dict(old.model.info, version="2.0.0"))
    pipe.swap(Runner(old.rt, relabelled, old.settings))  # a rollout's swap between the inference and the decisions
    pipe.decide(inferred)
    pipe.process(next(frames("seven", 1, spec, seq0=1)))
    first, second = [r for _, r in committed(outbox, "result")]
    assert (first["label"], first["model"]["version"]) == ("seven", "1.0.0")
    assert second["model"]["version"] == "2.0.0" and second["label"].startswith("x")
    assert inferred.runners[MAIN] is old


def test_a_failed_decision_stops_the_agent_and_is_named(example_ort, tmp_path):
    pipe, _, _, spec = make(example_ort, tmp_path)

    def decide(inferred, more):
        raise OSError("disk I/O error")

    stage = DecisionStage(decide, lambda: True).start()
    items = [pipe.infer(i) for i in frames("seven", 2, spec)]
    stage.submit(items[0], timeout=30)
    deadline = time.monotonic() + 30
    while stage.failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(stage.failed, OSError)
    with pytest.raises(InferenceError, match="decisions thread failed: OSError: disk I/O error"):
        stage.submit(items[1], timeout=30)
    with pytest.raises(InferenceError, match="decisions thread failed"):
        Agent._check_threads([], _Ok(), _Ok(), stage)
    stage.stop(5)


def test_a_stage_that_hangs_is_a_clear_error_and_stop_decides_what_is_queued(example_ort, tmp_path):
    pipe, outbox, _, spec = make(example_ort, tmp_path)
    release = threading.Event()

    def decide(inferred, more):
        release.wait(30)  # a commit that does not return
        pipe.decide(inferred, more)

    stage = DecisionStage(decide, lambda: True).start()
    items = [pipe.infer(i) for i in frames("seven", 3, spec)]
    stage.submit(items[0], timeout=5)  # taken at once, then stuck
    while stage.idle():
        time.sleep(0.01)
    stage.submit(items[1], timeout=5)  # queued
    t0 = time.monotonic()
    with pytest.raises(InferenceError, match="has not taken a frame for 0 s"):
        stage.submit(items[2], timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 10
    release.set()
    stage.stop(30)  # the queued frame is decided before the thread ends
    assert stage.decided == 2 and [r["frame"] for _, r in committed(outbox, "result")] == [1, 2]


def test_verdicts_from_another_thread_are_counted_once_while_stats_are_read(tmp_path):
    outbox = Outbox(str(tmp_path / "outbox.db"))
    policy = PolicyManager(SamplingPolicy(), "dev1", "edgesight", outbox)
    tel = Telemetry("dev1", "edgesight", [], outbox, _Publisher(), _Link(), policy)
    n, labels = 30000, ["label%d" % i for i in range(3000)]  # new labels keep growing the dictionaries
    errors = []

    def verdicts():
        for i in range(n):
            tel.verdict(labels[i % len(labels)], 0.9, i % 3 != 0)

    t = threading.Thread(target=verdicts)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show at once
    counted = 0
    try:
        t.start()
        while t.is_alive():
            counted += sum(tel.stats().counts.values())
            tel.snapshot()
    except RuntimeError as exc:  # "dictionary changed size during iteration"
        errors.append(exc)
    finally:
        sys.setswitchinterval(interval)
        t.join(60)
    counted += sum(tel.stats().counts.values())
    assert errors == [] and counted == n
    assert sum(tel.seen.values()) == n


class _Ok(object):
    failed = None


class _Publisher(object):
    capture_to_publish_ms = capture_to_ack_ms = ()

    def inflight(self):
        return 0


class _Link(object):
    connects, last_error = 0, None
    connected = threading.Event()

