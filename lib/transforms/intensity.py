"""Intensity normalisation shared by the geodesic distance and the graph cut."""

from __future__ import annotations

import numpy as np


def unit_range(image: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Map intensities to [0, 1] by their robust range (percentiles), clipping outliers.

    The geodesic distance (EGD) and the graph cut's contrast term (sigma = 0.1) assume
    intensities in [0, 1]; percentiles rather than min/max keep a few bright voxels
    (calcification, contrast, speckle) from squashing the contrast of the rest.
    A constant image maps to all zeros.

    Args:
        image: any spatial array, no channel axis.

    Returns:
        float32 array of the same shape, values in [0, 1].
    """
    arr = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(arr, [low_percentile, high_percentile])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
