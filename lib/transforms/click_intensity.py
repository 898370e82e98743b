"""What the clicks say about intensities: a foreground log-likelihood ratio from the image
around each kind of seed, to re-weigh the network's probability before the fusion.

A background click in a leak says "voxels that look like this are not the object"; the
fusion alone lets it act only over a ball of about its depth (``alpha`` of Eq. 7 fades with
distance), however homogeneous the leak. Here each seed (every margin point, every click) is
one Gaussian component fitted to the image in the ``3^n`` voxels around it. A voxel's fit to
a kind is ``max exp(-z^2 / 2)`` over that kind's components (``z``: its distance from the
component's mean in standard deviations), and its evidence ``log((fit_fg + e) / (fit_bg + e))``
with ``e`` the fit at three standard deviations, so that a voxel that fits neither kind (an
intensity no seed has seen) gets none rather than the ratio of two distribution tails. The
evidence, weighted, is added to the logit of the network's probability
(:func:`reweigh_probability`). Where the object and the leak share their intensities the two
kinds fit alike and nothing changes; the bounds of the refinement (claims, radius limit)
still decide which of the resulting changes a click may make.
"""

from __future__ import annotations

import numpy as np

from .validation import as_points

# A component's standard deviation is at least this share of the 1-99th percentile range of the
# image it is fitted on (a seed in a flat region would otherwise claim only its exact value).
MIN_STD_FRACTION = 0.02
FIT_FLOOR = float(np.exp(-4.5))  # the fit of a voxel three standard deviations from a component


def seed_components(image: np.ndarray, points: np.ndarray, min_std: float) -> np.ndarray:
    """``(N, 2)`` mean and standard deviation of ``image`` (any dimension) in the ``3^n``
    neighbourhood of each of ``points`` (``(N, ndim)`` voxel indices, clipped to the image),
    the deviation at least ``min_std``."""
    img = np.asarray(image, dtype=np.float64)
    pts = as_points(points, img.ndim, "seeds")
    out = np.empty((len(pts), 2))
    for k, p in enumerate(pts):
        window = img[tuple(slice(max(int(c) - 1, 0), int(c) + 2) for c in p)]
        out[k] = window.mean(), max(float(window.std()), min_std)
    return out


def _best_fit(image: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Per voxel, ``max exp(-z^2 / 2)`` over ``components`` (``(N, 2)`` mean, deviation)."""
    best_z2 = np.full(image.shape, np.inf)
    for mean, std in components:
        np.minimum(best_z2, ((image - mean) / std) ** 2, out=best_z2)
    return np.exp(-0.5 * best_z2)


def intensity_evidence(image: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray | None:
    """Foreground evidence of the clicks' intensities (nats, in about [-4.5, 4.5]): per voxel
    of ``image`` (spatial, any dimension), ``log((fit_fg + e) / (fit_bg + e))`` with the fits
    to the components (:func:`seed_components`) of the ``foreground`` and ``background`` seeds
    (``(N, ndim)`` voxel indices) and ``e`` = :data:`FIT_FLOOR`; float32 of the image's shape.
    ``None`` when a kind has no seed (nothing to compare)."""
    img = np.asarray(image, dtype=np.float64)
    fg, bg = as_points(foreground, img.ndim, "foreground seeds"), as_points(background, img.ndim, "background seeds")
    if not len(fg) or not len(bg):
        return None
    low, high = np.percentile(img, (1, 99))
    min_std = max(float(high - low) * MIN_STD_FRACTION, 1e-6)
    fits = [_best_fit(img, seed_components(img, seeds, min_std)) + FIT_FLOOR for seeds in (fg, bg)]
    return (np.log(fits[0]) - np.log(fits[1])).astype(np.float32)


def reweigh_probability(prob_fg: np.ndarray, evidence: np.ndarray | None, weight: float) -> np.ndarray:
    """``sigmoid(logit(P) + weight * evidence)``: the network's foreground probability
    ``prob_fg`` (any shape, in [0, 1]) moved by the intensity ``evidence`` of the same shape
    (:func:`intensity_evidence`, nats); ``P`` unchanged (float32) when ``evidence`` is None or
    ``weight`` is 0."""
    p = np.asarray(prob_fg, dtype=np.float32)
    if evidence is None or weight == 0:
        return p
    if np.shape(evidence) != p.shape:
        raise ValueError(f"reweigh_probability: evidence {np.shape(evidence)} does not match the probability {p.shape}")
    q = np.clip(p, 1e-6, 1 - 1e-6)
    logit = np.log(q) - np.log1p(-q) + np.float32(weight) * np.asarray(evidence, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
