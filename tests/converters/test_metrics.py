import numpy as np
import pytest

from edgesight.converters import metrics


def test_confusion_and_per_class():
    truth = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    cm = metrics.confusion_matrix(truth, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    pc = metrics.per_class(cm, ["a", "b", "c"])
    assert pc[0] == {"label": "a", "support": 2, "precision": 0.5, "recall": 0.5}
    assert pc[1]["precision"] == pytest.approx(2 / 3) and pc[1]["recall"] == 1.0
    assert pc[2]["precision"] is None and pc[2]["recall"] == 0.0


def test_cosine_and_histogram():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0]])
    assert metrics.cosine_rows(a, b).tolist() == pytest.approx([1.0, -1.0])
    assert metrics.histogram(np.array([0.0, 0.05, 0.5, 1.0]), bins=4) == [2, 0, 1, 1]


def test_compare_and_gate():
    probs_ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])  # one flip vs the reference
    truth = np.array([0, 1, 0, 1])
    ref = metrics.compare(probs_ref, probs_ref, ["a", "b"], truth)
    m = metrics.compare(probs, probs, ["a", "b"], truth, ref_outputs=probs_ref)
    assert ref["top1"] == 1.0 and m["top1"] == 0.75 and m["agreement"] == 0.75
    g = metrics.gate(m, ref, max_accuracy_drop=1.0, min_agreement=0.98)
    assert not g["passed"] and g["accuracy_drop_pt"] == pytest.approx(25.0) and len(g["reasons"]) == 2
    assert metrics.gate(m, ref, max_accuracy_drop=30.0, min_agreement=0.5)["passed"]
    unlabelled = metrics.compare(probs, probs, ["a", "b"], None, ref_outputs=probs_ref)
    assert "top1" not in unlabelled and metrics.gate(unlabelled, {}, 0.0, 0.7)["passed"]


def test_the_lower_bound_of_a_mean_cosine():
    steady = np.full(64, 0.995)
    assert metrics.lower_bound(steady) == pytest.approx(0.995)  # a model that quantizes well: the mean
    spread = np.array([0.999, 0.98] * 16)  # mean 0.9895
    b32 = metrics.lower_bound(spread)
    assert b32 < spread.mean() - 0.003
    assert metrics.lower_bound(np.tile(spread, 4)) > b32  # more images, a tighter bound
    assert metrics.lower_bound(np.array([0.97])) == pytest.approx(0.97)
