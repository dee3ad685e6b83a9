"""Pure functions comparing classifier outputs (validation report and gate)."""
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..runtimes.evaluate import accuracy, agreement


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def per_class(cm: np.ndarray, labels: Sequence[str]) -> List[Dict[str, object]]:
    """Precision, recall and support per class (precision/recall None where undefined)."""
    out = []
    for i, label in enumerate(labels):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        support = int(cm[i, :].sum())
        out.append({"label": label, "support": support,
                    "precision": (tp / predicted) if predicted else None,
                    "recall": (tp / support) if support else None})
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, np.sum(a * b, axis=1) / denom, 1.0)
    return cos


BOUND_Z = 2.0  # ~97.5% one-sided, for the normal approximation of a mean


def lower_bound(values: np.ndarray, z: float = BOUND_Z) -> float:
    """A lower confidence bound of the mean of ``values``: mean - z * standard error. What the converter's fidelity
    steps compare with ``--min-cosine`` on their few tuning images, so that a target met on those by luck is not
    taken as met (MobileNetV3: 0.9943 on 32 images, 0.9898 on the 100 of the validation set). For a model that
    quantizes well the cosines barely vary and the bound is the mean."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan")
    return float(v.mean() - z * v.std(ddof=1) / np.sqrt(len(v)))


def histogram(values: np.ndarray, bins: int = 10) -> List[int]:
    """Counts of values in [0, 1] split into ``bins`` equal bins (1.0 falls in the last)."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


DECISIVE_MARGIN = 0.1  # FP32's top-1 beats its top-2 by this much probability: a flip there is a real change


def compare(outputs: np.ndarray, probs: np.ndarray, labels: Sequence[str], truth: Optional[np.ndarray],
            ref_outputs: Optional[np.ndarray] = None, ref_probs: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Metrics for one artifact: top-1 (+ confusion, per class) where labelled; agreement, logit cosine and centred
    logit cosine vs a reference; with ``ref_probs`` also the agreement on the images where the reference is
    decisive (random or unlabelled data: near-ties flip under INT8 without meaning anything)."""
    pred = probs.argmax(axis=1)
    res: Dict[str, object] = {"images": int(len(pred)), "confidence_histogram": histogram(probs.max(axis=1))}
    if truth is not None:
        cm = confusion_matrix(truth, pred, len(labels))
        res["top1"] = accuracy(pred, truth)
        res["confusion"] = cm.tolist()
        res["per_class"] = per_class(cm, labels)
    if ref_outputs is not None:
        res["agreement"] = agreement(probs, ref_outputs)
        cos = cosine_rows(outputs, ref_outputs)
        res["cosine_mean"], res["cosine_min"] = float(cos.mean()), float(cos.min())
        res["cosine_centred_mean"] = float(cosine_rows(centred(outputs), centred(ref_outputs)).mean())
    if ref_outputs is not None and ref_probs is not None and ref_probs.shape[1] > 1:
        top2 = np.sort(ref_probs, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN
        res["decisive_images"] = int(decisive.sum())
        if decisive.any():
            res["agreement_decisive"] = agreement(probs[decisive], ref_outputs[decisive])
    return res


def centred(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean: logits are defined up to a constant, so this cosine ignores a common shift."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x - x.mean(axis=1, keepdims=True)


def gate(metrics: Dict[str, object], fp32: Dict[str, object], max_accuracy_drop: float, min_agreement: float,
         min_cosine: Optional[float] = None) -> Dict[str, object]:
    """Pass/fail with reasons. Labelled sets: the top-1 drop (percentage points) and the agreement with FP32;
    unlabelled ones: the agreement where FP32 is decisive (all images when that was not measured). With
    ``min_cosine``, the mean logit cosine too: fidelity, whatever the labels say."""
    reasons = []
    drop = None
    if "top1" in metrics and "top1" in fp32:
        drop = 100.0 * (float(fp32["top1"]) - float(metrics["top1"]))  # type: ignore[arg-type]
        if drop > max_accuracy_drop:
            reasons.append("top-1 drops %.2f pt (limit %.2f)" % (drop, max_accuracy_drop))
    labelled = "top1" in metrics
    decisive = not labelled and "decisive_images" in metrics
    agreement = metrics.get("agreement_decisive") if decisive else metrics.get("agreement")
    if agreement is not None and float(agreement) < min_agreement:  # type: ignore[arg-type]
        reasons.append("agreement with FP32 %.4f < %.4f%s" % (agreement, min_agreement, (
            " on the %d images where FP32 is decisive" % metrics["decisive_images"]) if decisive else ""))
    cosine = metrics.get("cosine_mean")
    if min_cosine is not None and cosine is not None and float(cosine) < min_cosine:  # type: ignore[arg-type]
        reasons.append("logit cosine with FP32 %.4f < %.4f" % (cosine, min_cosine))
    return {"passed": not reasons, "accuracy_drop_pt": drop, "reasons": reasons,
            "max_accuracy_drop": max_accuracy_drop, "min_agreement": min_agreement, "min_cosine": min_cosine}
