"""Exponentialized geodesic distance (EGD, paper Eq. 1-2) from click points.

Choices the paper leaves open, made here:

* **Image normalisation.** The geodesic step runs on the region's intensities z-scored
  (mean 0, std 1 over the region it is computed on: the crop) and multiplied by
  ``INTENSITY_SCALE = 2``, so an edge of two standard deviations costs 4 whatever the
  modality (HU, MR units, ultrasound grey levels). The scale sets how far a click's
  influence spreads (``alpha`` in the fusion, Eq. 7). It was picked on HC18 *training*
  images with a simulated imperfect CNN (z-score x0.5/1/2/4 and percentile-range [0,1]
  compared after 1-3 robot clicks; x2 was best, [0,1] spread so far it lowered Dice).
* **No spatial term, no spacing.** Eq. 2 integrates only the intensity change along the
  path, so we call GeodisTK with ``lamb = 1`` (gradient only). That integral,
  ``sum |dI|`` along the path, does not depend on the voxel size, so the distance is the
  same in mm or voxels and needs no spacing (GeodisTK 0.1.7's 3D scan multiplies each
  ``|dI|`` by the spacing at ``lamb = 1``, which is not Eq. 2, so unit spacing is passed).
  Over a perfectly flat region the EGD stays 1: it is a saliency map of the region
  connected to the clicks, not a distance-to-click map.
* **Scaling before exp.** None beyond the intensity scale: ``EGD = exp(-D)`` as Eq. 1,
  1 at the seeds and ``exp(-1)`` where the path has varied by half a standard deviation.
* **Iterations.** GeodisTK's raster scan with 2 forward/backward passes in 2D and 3D
  (enough for the paths inside a crop; more passes only matter for spiral-shaped paths).
"""

from __future__ import annotations

import GeodisTK
import numpy as np

from .validation import points_to_mask, validate_points

GEODESIC_ITERATIONS = 2
INTENSITY_SCALE = 2.0


def geodesic_intensity(image: np.ndarray) -> np.ndarray:
    """The image as the geodesic step sees it: z-scored over its own voxels, times
    ``INTENSITY_SCALE`` (a constant image maps to zeros)."""
    arr = np.asarray(image, dtype=np.float64)
    std = float(arr.std())
    if std == 0.0:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - arr.mean()) * (INTENSITY_SCALE / std)).astype(np.float32)


def geodesic_distance(
    image: np.ndarray,
    points: np.ndarray,
    iterations: int = GEODESIC_ITERATIONS,
) -> np.ndarray:
    """Geodesic distance from every voxel to the nearest of ``points`` (Eq. 2).

    Args:
        image: spatial array ``(H, W)`` or ``(H, W, D)`` (no channel), any intensity range.
        points: ``(N, ndim)`` voxel indices, N >= 1.

    Returns:
        float32 array of the image's shape; 0 at the points, dimensionless (see module doc).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"geodesic_distance: expected a 2D or 3D spatial array, got shape {img.shape}")
    pts = validate_points(points, img.shape, "seed points", min_count=1, allow_duplicates=True)
    intensity = np.ascontiguousarray(geodesic_intensity(img), dtype=np.float32)
    seeds = points_to_mask(pts, img.shape)
    if img.ndim == 2:
        # GeodisTK's 3D scan on a one-voxel-thick volume gives the 2D scan's result exactly
        # (tests/test_egd.py) in a fifth of the time (6 ms instead of 33 ms on 160x160).
        intensity, seeds = intensity[None], seeds[None]
    dist = GeodisTK.geodesic3d_raster_scan(intensity, seeds, [1.0, 1.0, 1.0], 1.0, iterations)
    return np.asarray(dist, dtype=np.float32).reshape(img.shape)


def exponentialized_geodesic_distance(
    image: np.ndarray,
    points: np.ndarray,
    iterations: int = GEODESIC_ITERATIONS,
) -> np.ndarray:
    """EGD (Eq. 1): ``exp(-D)`` with ``D`` from :func:`geodesic_distance`.

    Returns:
        float32 array of the image's shape with values in [0, 1], exactly 1 at the points;
        all zeros when ``points`` is empty (no cue).
    """
    img = np.asarray(image)
    if len(np.asarray(points).reshape(-1)) == 0:
        return np.zeros(img.shape, dtype=np.float32)
    return np.exp(-geodesic_distance(img, points, iterations)).astype(np.float32)
