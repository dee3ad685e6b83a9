"""Confidence on the host: temperature scaling fitted by negative log-likelihood, expected calibration error and
reliability bins, thresholds fitted to a goal, and the measures of accepted results (precision, coverage,
risk-coverage). Pure functions on arrays; scipy does the optimisation and the binomial tails.

Thresholds for a precision goal (``fit_precision_thresholds``) follow Learn-then-Test (Angelopoulos et al., 2021)
per class: candidate thresholds on a fixed grid from strict to loose; at each, the null hypothesis "precision of the
accepted images of this class < target" is tested with an exact binomial tail (the one-sided Clopper-Pearson
bound) at level ``1 - confidence``; fixed-sequence testing stops at the first threshold it cannot reject, and the
loosest rejected one is the class's threshold. Grid points at which too few images would be accepted for the test
ever to reject are passed over (that choice uses the scores only, never the labels). A class that rejects nowhere
gets threshold 1.0, which accepts nothing, and is reported.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConversionError, require_module
from ..runtimes.postprocess import NEVER, accepted_rows, to_logits, to_probabilities

BINS = 15
GRID = tuple(float(v) for v in np.round(1.0 - np.geomspace(1e-4, 0.7, 80), 6))  # 0.9999 down to 0.3


def _scipy(part: str) -> Any:
    return require_module("scipy." + part, "confidence calibration", "convert", package="scipy")


def nll(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``truth`` under ``softmax(logits / temperature)``."""
    special = _scipy("special")
    lp = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-lp[np.arange(len(truth)), truth].mean())


def fit_temperature(outputs: np.ndarray, truth: np.ndarray, kind: str = "logits",
                    bounds: Tuple[float, float] = (0.05, 50.0)) -> float:
    """The temperature minimising the NLL of the labelled ``outputs`` (scipy's bounded scalar search on log T)."""
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) < 2:
        raise ConversionError("temperature scaling needs labelled validation images; got %d" % len(truth))
    logits = to_logits(outputs, kind)
    optimize = _scipy("optimize")
    res = optimize.minimize_scalar(lambda t: nll(logits, truth, float(np.exp(t))), method="bounded",
                                   bounds=(float(np.log(bounds[0])), float(np.log(bounds[1]))),
                                   options={"xatol": 1e-5})
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> List[Dict[str, Any]]:
    """Equal-width bins of top-1 confidence: count, mean confidence and accuracy in each (empty bins kept)."""
    conf = np.asarray(probs).max(axis=1)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(truth)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        out.append({"lo": round(float(edges[b]), 4), "hi": round(float(edges[b + 1]), 4), "count": n,
                    "confidence": float(conf[sel].mean()) if n else None,
                    "accuracy": float(correct[sel].mean()) if n else None})
    return out


def ece(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over ``bins`` equal bins."""
    total = len(truth)
    if total == 0:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, truth, bins)
                     if b["count"]) / total)


def min_accepted(target: float, confidence: float) -> int:
    """Fewest accepted images at which the test can reject at all (all of them correct): target ** n <= 1 - c."""
    return int(np.ceil(np.log(1.0 - confidence) / np.log(target)))


def precision_p_value(correct: int, accepted: int, target: float) -> float:
    """P(at least ``correct`` of ``accepted`` right | precision = target): small means precision >= target."""
    if accepted == 0:
        return 1.0
    stats = _scipy("stats")
    return float(stats.binom.sf(correct - 1, accepted, target))


def fit_precision_thresholds(probs: np.ndarray, truth: np.ndarray, labels: Sequence[str], target: float,
                             confidence: float = 0.9, grid: Sequence[float] = GRID
                             ) -> Tuple[Dict[str, float], List[str]]:
    """Per class, the loosest grid threshold whose accepted images have precision >= ``target`` with the given
    confidence (Learn-then-Test fixed sequence, see the module). Returns the thresholds and the classes that could
    not meet the goal (given :data:`NEVER`)."""
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise ConversionError("the precision target and the confidence must lie strictly between 0 and 1")
    pred = np.asarray(probs).argmax(axis=1)
    conf = np.asarray(probs).max(axis=1)
    truth = np.asarray(truth)
    need = min_accepted(target, confidence)
    delta = 1.0 - confidence
    strict_first = sorted(grid, reverse=True)
    thresholds, unmet = {}, []
    for c, label in enumerate(labels):
        mine = pred == c
        chosen = None
        for lam in strict_first:
            acc = mine & (conf >= lam)
            n = int(acc.sum())
            if n < need:
                continue  # too few accepted to ever reject here: not tested (labels not looked at)
            if precision_p_value(int((truth[acc] == c).sum()), n, target) <= delta:
                chosen = lam
            else:
                break
        if chosen is None:
            unmet.append(label)
        thresholds[label] = NEVER if chosen is None else float(chosen)
    return thresholds, unmet


def fit_coverage_threshold(probs: np.ndarray, coverage: float) -> float:
    """One threshold that accepts at least ``coverage`` of the images (the (1 - coverage) quantile of top-1)."""
    if not 0.0 < coverage <= 1.0:
        raise ConversionError("the coverage target must lie in (0, 1]")
    conf = np.sort(np.asarray(probs).max(axis=1))
    if len(conf) == 0:
        raise ConversionError("fitting a threshold needs validation images")
    k = int(np.floor((1.0 - coverage) * len(conf)))
    return float(np.clip(conf[min(k, len(conf) - 1)], 0.0, NEVER))


def selective(probs: np.ndarray, truth: np.ndarray, labels: Sequence[str], default: float,
              per_class: Dict[str, float]) -> Dict[str, Any]:
    """Precision of the accepted results and coverage (share accepted), overall and per predicted class."""
    pred = np.asarray(probs).argmax(axis=1)
    truth = np.asarray(truth)
    acc = accepted_rows(probs, labels, default, per_class)
    right = pred == truth

    def share(a: np.ndarray, b: np.ndarray) -> Optional[float]:
        return float(b[a].mean()) if a.any() else None

    per = {}
    for c, label in enumerate(labels):
        mine = pred == c
        per[label] = {"predicted": int(mine.sum()), "accepted": int((mine & acc).sum()),
                      "precision": share(mine & acc, right), "coverage": share(mine, acc),
                      "threshold": float(per_class.get(label, default))}
    return {"images": int(len(truth)), "accepted": int(acc.sum()), "precision": share(acc, right),
            "coverage": float(acc.mean()) if len(acc) else None, "per_class": per}


def risk_coverage(probs: np.ndarray, truth: np.ndarray, points: int = 21) -> List[Dict[str, float]]:
    """Error rate of the most confident images against the share kept, at ``points`` coverages from 0 to 1."""
    conf = np.asarray(probs).max(axis=1)
    wrong = (np.asarray(probs).argmax(axis=1) != np.asarray(truth)).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(wrong[order])
    out = []
    for cov in np.linspace(0.0, 1.0, points)[1:]:
        k = max(1, int(round(cov * len(conf))))
        out.append({"coverage": round(float(cov), 4), "risk": float(cum[k - 1] / k),
                    "threshold": float(conf[order][k - 1])})
    return out


def calibrate(outputs: np.ndarray, truth: np.ndarray, labels: Sequence[str], kind: str,
              target_precision: Optional[float], target_coverage: Optional[float], confidence: float
              ) -> Dict[str, Any]:
    """Everything fitted for one artifact on labelled validation outputs: the temperature, ECE before and after,
    reliability before and after, and the thresholds for the goal (None: the package's thresholds stay)."""
    truth = np.asarray(truth, dtype=np.int64)
    t = fit_temperature(outputs, truth, kind)
    before, after = to_probabilities(outputs, kind), to_probabilities(outputs, kind, t)
    fit: Dict[str, Any] = {"temperature": t, "images": int(len(truth)), "ece_before": ece(before, truth),
                           "ece_after": ece(after, truth), "reliability_before": reliability(before, truth),
                           "reliability_after": reliability(after, truth), "thresholds": None, "unmet": [],
                           "goal": None}
    if target_precision is not None:
        per_class, unmet = fit_precision_thresholds(after, truth, labels, target_precision, confidence)
        fit.update(thresholds={"default": NEVER, "per_class": per_class}, unmet=unmet,
                   goal="precision >= %g per class at confidence %g" % (target_precision, confidence))
    elif target_coverage is not None:
        th = fit_coverage_threshold(after, target_coverage)
        fit.update(thresholds={"default": th, "per_class": {}}, goal="coverage >= %g" % target_coverage)
    return fit


def report_split(outputs: np.ndarray, truth: np.ndarray, labels: Sequence[str], kind: str, temperature: float,
                 default: float, per_class: Dict[str, float]) -> Dict[str, Any]:
    """The measures on a held-out (test) split: ECE before/after, reliability, selective precision/coverage per
    class with the thresholds in force, and the risk-coverage curve of the calibrated scores."""
    truth = np.asarray(truth, dtype=np.int64)
    before, after = to_probabilities(outputs, kind), to_probabilities(outputs, kind, temperature)
    return {"images": int(len(truth)), "top1": float((after.argmax(axis=1) == truth).mean()),
            "ece_before": ece(before, truth), "ece_after": ece(after, truth),
            "reliability_after": reliability(after, truth), "selective": selective(after, truth, labels, default,
                                                                                  per_class),
            "risk_coverage": risk_coverage(after, truth)}
