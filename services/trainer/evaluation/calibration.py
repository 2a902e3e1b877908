"""Temperature scaling of the 3-class logits, and the expected calibration error (ECE).

Temperature scaling (Guo et al., 2017) divides every logit by one scalar T fitted by minimising the
negative log-likelihood on data the network did not train on; it changes confidence, never the
ranking. Images whose pneumonia subtype is unknown count through the total pneumonia mass
p(bacterial) + p(viral).

ECE here is binary, on the pneumonia probability: `ECE_BINS` (10) equal-width bins over [0, 1],
each contributing |mean predicted probability - observed pneumonia rate| weighted by its share of
images.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from shared.contract import PNEUMONIA_CLASSES, UNKNOWN_SUBTYPE

ECE_BINS = 10
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Softmax of logits / temperature along the last axis, in float64."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1))


def _label_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean log-likelihood; UNKNOWN_SUBTYPE counts as either pneumonia class."""
    log_p = log_softmax(logits / temperature, axis=-1)
    known = labels != UNKNOWN_SUBTYPE
    total = log_p[known, labels[known]].sum()
    total += logsumexp(log_p[~known][:, list(PNEUMONIA_CLASSES)], axis=-1).sum()
    return float(total / len(labels))


def fit_temperature(logits, labels) -> float:
    """The temperature T minimising NLL of softmax(logits / T); labels 0/1/2, or -1 (see above)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError("fit_temperature needs logits [N, C] and N labels")
    # Optimise log T so that the search is symmetric around T = 1.
    result = minimize_scalar(
        lambda log_t: -_label_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def expected_calibration_error(y_true, p_pneumonia, n_bins: int = ECE_BINS) -> float:
    """Binary ECE with `n_bins` equal-width bins; the last bin includes p = 1."""
    y_true = np.asarray(y_true, dtype=float)
    p = np.asarray(p_pneumonia, dtype=float)
    if len(p) == 0:
        raise ValueError("ECE of no predictions is undefined")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(p[members].mean() - y_true[members].mean())
    return float(error)
