"""Segmentation quality: Dice (Eq. 12) and average symmetric surface distance (Eq. 13)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    p = np.asarray(prediction) > 0
    r = np.asarray(reference) > 0
    if p.shape != r.shape:
        raise ValueError(f"dice: shapes differ ({p.shape} vs {r.shape})")
    total = int(p.sum()) + int(r.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def assd(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance in physical units (mm with ``spacing``).

    0 when both masks are empty, ``inf`` when exactly one is.
    """
    p = np.asarray(prediction) > 0
    r = np.asarray(reference) > 0
    if p.shape != r.shape:
        raise ValueError(f"assd: shapes differ ({p.shape} vs {r.shape})")
    if not p.any() and not r.any():
        return 0.0
    if not p.any() or not r.any():
        return float("inf")
    sp = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    sp_, sr = _surface(p), _surface(r)
    to_r = ndimage.distance_transform_edt(~sr, sampling=sp)
    to_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    return float((to_r[sp_].sum() + to_p[sr].sum()) / (sp_.sum() + sr.sum()))
