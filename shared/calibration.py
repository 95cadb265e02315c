"""Calibrated probabilities: one temperature fit on held-out logits, and how to measure calibration.

    p = softmax(logits / T)        T > 0 minimises the mean cross-entropy on the validation split

Dividing by T never changes the argmax, so accuracy is untouched. ECE: the share-weighted gap
between confidence and accuracy over `BINS` equal-width bins of the top probability.
Numpy only.
"""

import math

import numpy as np

from shared.lexical import cross_entropy, softmax

BINS = 15
LOG_T_RANGE = (math.log(0.25), math.log(20.0))  # sharper than 4x only from a separable validation split: refused


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return cross_entropy(np.asarray(logits, dtype=np.float64) / temperature, np.asarray(labels))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tolerance: float = 1e-4) -> float:
    """The T minimising `nll(logits / T)` (golden-section search on log T, a convex function of
    1 / T); 1.0 with no examples."""
    if len(labels) == 0:
        return 1.0
    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    loss = lambda log_t: nll(logits, labels, math.exp(log_t))
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    t = math.exp((lo + hi) / 2)
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0  # never worse than T = 1 on its data


def expected_calibration_error(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = BINS
) -> float:
    """sum over bins of (share of examples) * |accuracy - mean confidence|, by top probability."""
    if len(labels) == 0:
        return 0.0
    probs = softmax(np.asarray(logits, dtype=np.float64) / temperature)  # (N, C)
    correct = (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
    return _binned_gap(probs.max(-1), correct, bins)


def sampling_floor(
    logits: np.ndarray, temperature: float = 1.0, draws: int = 200, seed: int = 0, bins: int = BINS
) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many examples:
    each example right with probability its confidence (seeded draws), ECE averaged over `draws`.
    On ~100 test texts it is far from 0: the binned estimate's own noise."""
    if len(logits) == 0:
        return 0.0
    confidence = softmax(np.asarray(logits, dtype=np.float64) / temperature).max(-1)  # (N,)
    rng = np.random.default_rng(seed)
    draws_ece = [
        _binned_gap(confidence, (rng.random(len(confidence)) < confidence).astype(np.float64), bins)
        for _ in range(draws)
    ]
    return float(np.mean(draws_ece))


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE of (N,) top-probabilities and (N,) 0/1 outcomes over `bins` equal-width bins."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # (N,) bin of each example
    ece = 0.0
    for b in np.unique(which):
        inside = which == b
        ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)
