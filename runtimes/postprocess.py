"""Pure functions from model output to class scores (shared by the agent, validation and the CLI)."""
from typing import Any, List, Mapping, NamedTuple, Sequence

import numpy as np


class Prediction(NamedTuple):
    index: int
    label: str
    score: float


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def to_probabilities(output: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """``kind`` is the package's ``output``: ``logits`` (softmax applied) or ``probabilities`` (used as is).
    ``temperature`` is an artifact's fitted calibration: ``softmax(logits / T)``; for probabilities the same on
    their logarithms, ``softmax(log(p) / T)`` (= p ** (1/T), renormalised). T = 1 changes nothing."""
    if kind not in ("logits", "probabilities"):
        raise ValueError("output kind must be 'logits' or 'probabilities', got %r" % (kind,))
    if not (temperature > 0.0 and np.isfinite(temperature)):
        raise ValueError("temperature must be a positive finite number, got %r" % (temperature,))
    if temperature == 1.0:
        return softmax(output) if kind == "logits" else np.asarray(output, dtype=np.float32)
    return softmax(to_logits(output, kind) / float(temperature))


def to_logits(output: np.ndarray, kind: str) -> np.ndarray:
    """Logits (up to a constant per row) of a model's output: as is, or the logarithm of probabilities."""
    x = np.asarray(output, dtype=np.float64)
    return x if kind == "logits" else np.log(np.clip(x, 1e-12, None))


NEVER = 1.0  # a threshold of 1.0 accepts nothing (what a class that cannot meet a fitted goal gets)


def accepted(score: Any, threshold: Any) -> Any:
    """THE acceptance rule (agent, classify, the converter's confidence report): top-1 score at or above its class
    threshold, and a threshold of 1.0 accepts nothing. Scalars or numpy arrays."""
    return np.logical_and(np.asarray(score) >= threshold, np.asarray(threshold) < NEVER)


def accepted_rows(probs: np.ndarray, labels: Sequence[str], default: float, per_class: Mapping[str, float]
                  ) -> np.ndarray:
    """Per row of scores: would the device accept its top-1, at that class's threshold (``default`` for the
    classes ``per_class`` does not name)?"""
    p = np.asarray(probs)
    th = np.array([per_class.get(label, default) for label in labels])[p.argmax(axis=1)]
    return accepted(p.max(axis=1), th)


def top_k(scores: np.ndarray, labels: Sequence[str], k: int = 3) -> List[Prediction]:
    """Best ``k`` classes of one score vector, highest first (ties: lower index first)."""
    s = np.asarray(scores).reshape(-1)
    if len(s) != len(labels):
        raise ValueError("%d scores but %d labels" % (len(s), len(labels)))
    k = max(1, min(int(k), len(s)))
    order = np.argsort(-s, kind="stable")[:k]
    return [Prediction(int(i), labels[int(i)], float(s[i])) for i in order]
