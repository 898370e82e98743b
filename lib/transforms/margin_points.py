"""Interior margin points (paper section 2.1): simulated from a reference mask for training,
and a deterministic variant for benchmarks.

Simulation, per object:

1. boundary voxels close to the extreme points (min/max along each axis): all 2*ndim of
   them, or with probability 1/2 one fewer (3 in 2D, 5 in 3D) when the relaxed box of the
   rest still covers the object;
2. ``n`` more boundary voxels drawn at random, ``n`` uniform in ``[0, max_random]``;
3. every point moved inwards to the nearest voxel whose distance to the background is at
   least ``depth`` (physical units), ``depth`` drawn per point as a fraction of the object's
   largest extent and capped at half the object's thickness, so clicks stay inside thin
   objects. If a moved extreme point would leave part of the object outside the relaxed
   box, depths are halved until it does not (boundary voxels themselves always work).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_numpy
from scipy import ndimage

from .crop import DEFAULT_MARGIN_RATIO, DEFAULT_MIN_MARGIN, relaxed_box, spacing_of
from .validation import unique_points

DEFAULT_DEPTH_RANGE = (0.01, 0.06)
DEFAULT_MAX_RANDOM = 5
_EXTREME_TOLERANCE = 0.03


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask) > 0
    if m.ndim not in (2, 3):
        raise ValueError(f"margin points: expected a 2D or 3D spatial mask, got shape {m.shape}")
    if not m.any():
        raise ValueError("margin points: the label is empty, there is no object to click on")
    return m


def boundary_voxels(mask: np.ndarray) -> np.ndarray:
    """``(N, ndim)`` indices of object voxels with a background neighbour (image border counts)."""
    m = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(m, border_value=0)
    return np.argwhere(m & ~inner)


def covers(box: np.ndarray, mask: np.ndarray) -> bool:
    """True when every object voxel of ``mask`` lies inside ``box`` (``(2, ndim)``)."""
    idx = np.argwhere(mask)
    return bool(np.all(idx >= box[0]) and np.all(idx < box[1]))


def _extreme_groups(boundary: np.ndarray, tolerance: int) -> list[np.ndarray]:
    """For each axis, the boundary voxels within ``tolerance`` of the min and of the max."""
    groups = []
    for axis in range(boundary.shape[1]):
        coord = boundary[:, axis]
        groups.append(boundary[coord <= coord.min() + tolerance])
        groups.append(boundary[coord >= coord.max() - tolerance])
    return groups


def move_inwards(
    mask: np.ndarray,
    points: np.ndarray,
    depth: np.ndarray | float,
    spacing: Sequence[float] | None = None,
    depth_map: np.ndarray | None = None,
) -> np.ndarray:
    """Move each point to the nearest object voxel at least ``depth`` away from the background.

    Args:
        mask: binary spatial mask.
        points: ``(N, ndim)`` object voxels (typically on the boundary).
        depth: physical distance per point (or one for all); capped at half the object's
            largest thickness so thin objects keep their clicks in the middle.
        depth_map: precomputed ``distance_transform_edt(mask, sampling=spacing)``.

    Returns:
        ``(N, ndim)`` int64 object voxels.
    """
    m = np.asarray(mask, dtype=bool)
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    edt = ndimage.distance_transform_edt(m, sampling=sp) if depth_map is None else depth_map
    pts = np.asarray(points, dtype=np.int64).reshape(-1, m.ndim)
    depths = np.broadcast_to(np.asarray(depth, dtype=np.float64), (len(pts),))
    depths = np.minimum(depths, 0.5 * float(edt.max()))
    moved = np.empty_like(pts)
    shape = np.asarray(m.shape)
    for i, (p, t) in enumerate(zip(pts, depths)):
        radius = np.ceil(3.0 * t / sp).astype(np.int64) + 2
        lo = np.maximum(p - radius, 0)
        hi = np.minimum(p + radius + 1, shape)
        window = edt[tuple(slice(a, b) for a, b in zip(lo, hi))]
        candidates = np.argwhere(window >= max(t, 1e-9))
        if len(candidates) == 0:  # narrow neck: take the deepest voxel nearby
            candidates = np.argwhere(window == window.max())
        offsets = (candidates + lo - p) * sp
        moved[i] = candidates[np.argmin(np.sum(offsets**2, axis=1))] + lo
    return moved


def _inward_with_cover(
    mask: np.ndarray,
    points: np.ndarray,
    depths: np.ndarray,
    spacing: np.ndarray,
    edt: np.ndarray,
    margin_ratio: float,
    min_margin: float,
) -> np.ndarray:
    """Move points inwards, halving the depths until the relaxed box covers the object."""
    for _ in range(6):
        moved = move_inwards(mask, points, depths, spacing, edt)
        if covers(relaxed_box(moved, mask.shape, spacing, margin_ratio, min_margin), mask):
            return moved
        depths = depths / 2.0
    return points


def simulate_margin_points(
    mask: np.ndarray,
    rng: np.random.RandomState,
    spacing: Sequence[float] | None = None,
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE,
    max_random: int = DEFAULT_MAX_RANDOM,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
    min_margin: float = DEFAULT_MIN_MARGIN,
) -> np.ndarray:
    """Simulate a user's interior margin points on ``mask`` (see module doc).

    Args:
        mask: binary spatial mask ``(H, W)`` or ``(H, W, D)`` of one object.
        rng: random state (MONAI's ``Randomizable.R``).
        spacing: physical voxel size (mm); 1 when omitted.
        depth_range: inward distance as a fraction of the object's largest physical extent.
        max_random: most extra points on the rest of the boundary.

    Returns:
        ``(N, ndim)`` int64 voxel indices, all inside the object, extreme points first.
    """
    m = _check_mask(mask)
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    boundary = boundary_voxels(m)
    extent = (boundary.max(0) - boundary.min(0) + 1) * sp
    tolerance = max(1, int(round(_EXTREME_TOLERANCE * float(np.min(boundary.max(0) - boundary.min(0) + 1)))))
    extremes = np.stack([g[rng.randint(len(g))] for g in _extreme_groups(boundary, tolerance)])
    if rng.rand() < 0.5:
        for drop in rng.permutation(len(extremes)):
            kept = np.delete(extremes, drop, axis=0)
            if covers(relaxed_box(kept, m.shape, sp, margin_ratio, min_margin), m):
                extremes = kept
                break
    n_random = rng.randint(max_random + 1)
    extra = boundary[rng.choice(len(boundary), size=min(n_random, len(boundary)), replace=False)]
    points = np.concatenate([extremes, extra])
    depths = rng.uniform(*depth_range, size=len(points)) * float(extent.max())
    edt = ndimage.distance_transform_edt(m, sampling=sp)
    moved = _inward_with_cover(m, points, depths, sp, edt, margin_ratio, min_margin)
    return unique_points(moved)


def extreme_margin_points(
    mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    depth_fraction: float = 0.03,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
    min_margin: float = DEFAULT_MIN_MARGIN,
) -> np.ndarray:
    """Deterministic margin points for benchmarks: the 2*ndim extreme boundary voxels (the
    middle one of each extreme face), moved ``depth_fraction`` of the object's largest extent
    inwards. Returns ``(N, ndim)`` int64."""
    m = _check_mask(mask)
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    boundary = boundary_voxels(m)
    extent = (boundary.max(0) - boundary.min(0) + 1) * sp
    points = np.stack([g[len(g) // 2] for g in _extreme_groups(boundary, 0)])
    depths = np.full(len(points), depth_fraction * float(extent.max()))
    edt = ndimage.distance_transform_edt(m, sampling=sp)
    return unique_points(_inward_with_cover(m, points, depths, sp, edt, margin_ratio, min_margin))


class SimulateMarginPointsd(Randomizable, MapTransform):
    """Simulate interior margin points from the label in ``keys`` (``(1, *spatial)``, object = >0)
    and store them as ``data[points_key]`` (``(N, ndim)`` int64 voxel indices). Voxel size
    from ``data[spacing_key]`` or the label's MetaTensor ``pixdim``. Seed with
    ``set_random_state``; a new draw on every call (every epoch)."""

    def __init__(
        self,
        keys: KeysCollection,
        points_key: str = "margin_points",
        spacing_key: str = "spacing",
        depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE,
        max_random: int = DEFAULT_MAX_RANDOM,
        margin_ratio: float = DEFAULT_MARGIN_RATIO,
        min_margin: float = DEFAULT_MIN_MARGIN,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.points_key = points_key
        self.spacing_key = spacing_key
        self.depth_range = depth_range
        self.max_random = max_random
        self.margin_ratio = margin_ratio
        self.min_margin = min_margin

    def randomize(self, data=None) -> None:  # draws happen inside simulate_margin_points
        pass

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = convert_to_numpy(d[key])
            spacing = spacing_of(d, key, self.spacing_key)
            d[self.points_key] = simulate_margin_points(
                label[0], self.R, spacing, self.depth_range, self.max_random, self.margin_ratio, self.min_margin
            )
        return d


class ExtremeMarginPointsd(MapTransform):
    """Deterministic margin points (:func:`extreme_margin_points`) from the label in ``keys``
    (``(1, *spatial)``), stored as ``data[points_key]``; for validation and benchmarks."""

    def __init__(
        self,
        keys: KeysCollection,
        points_key: str = "margin_points",
        spacing_key: str = "spacing",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.points_key = points_key
        self.spacing_key = spacing_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.points_key] = extreme_margin_points(convert_to_numpy(d[key])[0], spacing_of(d, key, self.spacing_key))
        return d
