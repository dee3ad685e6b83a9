"""Pure functions from model output to class scores (shared by the agent, validation and the CLI)."""
from typing import List, NamedTuple, Sequence

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


def to_probabilities(output: np.ndarray, kind: str) -> np.ndarray:
    """``kind`` is the package's ``output``: ``logits`` (softmax applied) or ``probabilities`` (used as is)."""
    if kind == "logits":
        return softmax(output)
    if kind == "probabilities":
        return np.asarray(output, dtype=np.float32)
    raise ValueError("output kind must be 'logits' or 'probabilities', got %r" % (kind,))


def top_k(scores: np.ndarray, labels: Sequence[str], k: int = 3) -> List[Prediction]:
    """Best ``k`` classes of one score vector, highest first (ties: lower index first)."""
    s = np.asarray(scores).reshape(-1)
    if len(s) != len(labels):
        raise ValueError("%d scores but %d labels" % (len(s), len(labels)))
    k = max(1, min(int(k), len(s)))
    order = np.argsort(-s, kind="stable")[:k]
    return [Prediction(int(i), labels[int(i)], float(s[i])) for i in order]
