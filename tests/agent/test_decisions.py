"""The pipeline's pure decisions: thresholds, state hysteresis, publish gate, percentiles."""
from edgesight.agent import decisions


# -- decisions -------------------------------------------------------------------------------------------------
def test_thresholds_and_acceptance():
    assert decisions.threshold_for("cat", 0.8, {"cat": 0.6}) == 0.6
    assert decisions.threshold_for("dog", 0.8, {"cat": 0.6}) == 0.8
    assert decisions.is_accepted(0.8, 0.8) and not decisions.is_accepted(0.79, 0.8)


def test_state_hysteresis():
    t = decisions.StateTracker(hysteresis=3)
    assert [t.update("cat", True) for _ in range(3)] == [None, None, "cat"]
    assert t.update("dog", True) is None and t.update("dog", False) is None  # uncertain: no count, no reset
    assert t.update("dog", True) is None and t.update("dog", True) == "dog"
    assert t.update("dog", True) is None  # no change, no message
    one = decisions.StateTracker()
    assert one.update("a", True) == "a" and one.update("b", True) == "b"


def test_publish_gate():
    every = decisions.PublishGate("every_frame", min_interval=1.0)
    assert every.should_publish("a", True, 0.0) and not every.should_publish("a", True, 0.5)
    assert every.should_publish("b", True, 0.6)  # a change is never held back
    assert every.should_publish("b", True, 1.7)
    change = decisions.PublishGate("on_change")
    assert change.should_publish("a", True, 0) and not change.should_publish("a", True, 10)
    assert change.should_publish("a", False, 11)


def test_percentile():
    assert decisions.percentile([], 50) is None
    assert decisions.percentile([3, 1, 2], 50) == 2 and decisions.percentile(range(101), 95) == 95
