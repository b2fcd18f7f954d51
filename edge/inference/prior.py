"""A site's prevalence from its own unlabelled results (Saerens, Latinne and Decaestecker 2002,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 14).

Posteriors calibrated under the training prevalence pi_t are reweighted by q / pi_t (positive)
and (1 - q) / (1 - pi_t) (the rest), renormalised, and q is re-estimated as their mean, until it
stops moving: an EM that maximises the likelihood of the site's images under the new prior.
Positive-vs-rest, like the operating points. Pure numpy; shown to the user, never applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.inference import metrics as m

EPS = 1e-6


def adjust(prob: np.ndarray | float, training_prior: float, new_prior: float) -> np.ndarray:
    """P(positive | x) under `new_prior`, from the posterior under `training_prior` (Bayes)."""
    p = np.clip(np.asarray(prob, np.float64), EPS, 1 - EPS)
    positive = p * new_prior / training_prior
    rest = (1 - p) * (1 - new_prior) / (1 - training_prior)
    return np.asarray(positive / (positive + rest))


def em_prior(prob: np.ndarray, training_prior: float, tol: float = 1e-7, max_iter: int = 1000) -> float:
    """The local prevalence of the positive label that the EM converges to."""
    p = np.asarray(prob, np.float64)
    prior = training_prior
    for _ in range(max_iter):
        new = float(np.clip(adjust(p, training_prior, prior).mean(), EPS, 1 - EPS))
        if abs(new - prior) < tol:
            return new
        prior = new
    return prior


@dataclass(frozen=True)
class PriorEstimate:
    prior: float
    ci95: tuple[float, float]
    training_prior: float
    results: int


def estimate(prob: np.ndarray, training_prior: float, *, rounds: int = 200, seed: int = 0) -> PriorEstimate:
    """EM estimate with a percentile bootstrap interval over the results."""
    p = np.asarray(prob, np.float64)
    low, high = m.bootstrap_interval(
        lambda sample: em_prior(sample, training_prior, tol=1e-5), p, rounds=rounds, seed=seed
    )
    return PriorEstimate(
        round(em_prior(p, training_prior), 4), (round(low, 4), round(high, 4)), training_prior, len(p)
    )
