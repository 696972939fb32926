"""What the train step exports and `fruitflow classify` reads back: file names and the numpy maths both
sides share (no Spark here: classify runs without it)."""

from __future__ import annotations

import numpy as np

EXPORT_JSON, EXPORT_ARRAYS = "classify.json", "classify.npz"
EXPORT_FORMAT = 1


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def pairwise_distances(points: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Euclidean distances, points x bank."""
    d2 = (points ** 2).sum(axis=1)[:, None] - 2 * points @ bank.T + (bank ** 2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def nearest_distances(points: np.ndarray, bank: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distance from each point to its nearest bank vector, a chunk of points at a time."""
    out = np.empty(len(points))
    for i in range(0, len(points), chunk):
        out[i:i + chunk] = pairwise_distances(points[i:i + chunk], bank).min(axis=1)
    return out


def unknown_threshold(held_out: np.ndarray, bank: np.ndarray, quantile: float) -> float:
    """The nearest-neighbour distance within which `quantile` of the held-out photos of known fruits stay."""
    if not len(held_out) or not len(bank):
        return float("inf")
    return float(np.quantile(nearest_distances(held_out, bank), quantile, method="higher"))


def reduce(features: np.ndarray, color: np.ndarray, *, l2_normalize: bool, color_weight: float,
           mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """The PCA step's transform on arrays: [unit length], [weighted colour histogram appended], centred,
    projected on the components."""
    x = features.astype(np.float64)
    if l2_normalize:
        x = unit_rows(x)
    if color_weight > 0:
        x = np.hstack([x, color_weight * color.astype(np.float64)])
    return (x - mean) @ components
