"""The click contract between MONAI Label clients and MIDeepSeg.

Slicer and OHIF send every point placed so far, in order, on every request:
``foreground`` and ``background`` voxel-index lists of the original image. The first
``margin_points`` foreground points are the interior margin points (stage 1); later
foreground points and all background points are refinement clicks (stage 2).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from .crop import spacing_of
from .validation import InvalidInputError, as_points, check_image, stacked_points, unique_points, validate_points

MIN_MARGIN_POINTS = 2


def split_clicks(
    foreground, background, spatial_shape, margin_points: int, start_mask: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the request's point lists and split them into
    ``(margin_points, refinement_foreground, background)``, each ``(N, ndim)`` int64.

    A voxel clicked twice with the same label counts once; one clicked as both foreground
    and background, a point outside the image, a wrong number of coordinates or a
    non-numeric value raise :class:`InvalidInputError`, as does a request with no point at all. With
    ``start_mask`` (the request refines an uploaded mask instead of stage 1) there are no
    margin points: every point is a refinement click, and none at all is allowed.
    """
    ndim = len(spatial_shape)
    n = 0 if start_mask else int(margin_points)
    if not start_mask and n < MIN_MARGIN_POINTS:
        raise InvalidInputError(f"margin_points must be at least {MIN_MARGIN_POINTS}, got {margin_points}")
    fg = unique_points(validate_points(foreground, spatial_shape, "foreground", allow_duplicates=True))
    bg = unique_points(validate_points(background, spatial_shape, "background", allow_duplicates=True))
    if len(fg) == 0 and len(bg) == 0 and not start_mask:
        raise InvalidInputError("no points given: click the interior margin points (foreground) first")
    both = {tuple(p) for p in fg.tolist()} & {tuple(p) for p in bg.tolist()}
    if both:
        raise InvalidInputError(f"voxel(s) {sorted(both)} clicked as both foreground and background")
    return fg[:n], fg[n:], bg if len(fg) >= n else np.zeros((0, ndim), dtype=np.int64)


class ParseClicksd(MapTransform):
    """Split the request's point lists ``foreground``/``background`` (all points so far,
    left unchanged) into ``margin_points``, ``fg_clicks`` and ``bg_clicks`` arrays
    (:func:`split_clicks`), checked against the image in ``keys`` (``(C, *spatial)``).

    The count of margin points is read from ``data[count_key]`` (the infer task stores the
    request's ``margin_points`` option there), falling back to ``default_count``. Background
    clicks placed before all margin points are in are kept out until they are (they are
    refinements). With a mask to start from in ``data[start_mask_key]`` there are no margin
    points (:func:`split_clicks`). Only the image's shape is read here: checking its content
    is the loader's job, once.
    """

    def __init__(
        self,
        keys: KeysCollection,
        default_count: int,
        count_key: str = "margin_count",
        margin_key: str = "margin_points",
        foreground_key: str = "foreground",
        background_key: str = "background",
        fg_clicks_key: str = "fg_clicks",
        bg_clicks_key: str = "bg_clicks",
        start_mask_key: str = "start_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.start_mask_key = start_mask_key
        self.default_count = default_count
        self.count_key = count_key
        self.margin_key = margin_key
        self.foreground_key = foreground_key
        self.background_key = background_key
        self.fg_clicks_key = fg_clicks_key
        self.bg_clicks_key = bg_clicks_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = np.shape(d[key])[1:]
            if len(shape) not in (2, 3):
                raise InvalidInputError(f"image: expected a channel-first 2D or 3D image, got shape {np.shape(d[key])}")
            count = d.get(self.count_key, self.default_count)
            try:
                count = int(count)
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"margin_points must be an integer, got {count!r}") from e
            margin, fg, bg = split_clicks(
                d.get(self.foreground_key), d.get(self.background_key), shape, count, d.get(self.start_mask_key) is not None
            )
            d[self.margin_key] = margin
            d[self.fg_clicks_key] = fg
            d[self.bg_clicks_key] = bg
        return d


class SelectSliced(MapTransform):
    """For a 2D model on a 3D image: keep the slice the points lie on.

    The clicks (``(N, 3)`` voxel indices) must all share their coordinate along
    ``slice_axis`` (Slicer and OHIF send the points of the current slice). The image in
    ``keys`` (``(C, H, W, D)``) becomes that slice ``(C, *remaining)``, a MetaTensor whose
    affine carries the volume's spacing along the two remaining axes (so the relaxed box,
    the distances and the graph cut work in mm on any slice axis), the clicks lose that
    coordinate, and ``data["slice"]`` records ``(axis, index, volume_shape)`` for
    :class:`PasteSliced`. 2D images pass unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        point_keys: tuple[str, ...] = ("foreground", "background"),
        slice_axis: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.point_keys = point_keys
        self.slice_axis = slice_axis

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = np.shape(d[key])[1:]
            if len(shape) == 2:
                continue
            try:
                axis = int(d.get("slice_axis", self.slice_axis))
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"slice_axis must be 0, 1 or 2, got {d.get('slice_axis')!r}") from e
            if axis not in (0, 1, 2):
                raise InvalidInputError(f"slice_axis must be 0, 1 or 2, got {axis}")
            points = {k: as_points(d.get(k), 3, k) for k in self.point_keys}
            if not any(len(p) for p in points.values()):
                raise InvalidInputError("no points given: click the interior margin points (foreground) first")
            index = np.concatenate([p[:, axis] for p in points.values()])
            slices = np.unique(index)
            if len(slices) != 1:
                raise InvalidInputError(
                    f"the 2D model segments one slice: all points need the same index along axis {axis}, "
                    f"got {slices.tolist()}"
                )
            k = int(slices[0])
            if not 0 <= k < shape[axis]:
                raise InvalidInputError(f"slice index {k} lies outside the image of shape {tuple(shape)}")
            in_plane = np.delete(spacing_of(d, key), axis)
            image = check_image(np.take(convert_to_numpy(d[key]), k, axis=axis + 1), name=f"slice {k}")
            d[key] = MetaTensor(image, affine=np.diag([*in_plane, 1.0, 1.0]))
            if d.get("spacing") is not None:
                d["spacing"] = in_plane
            for name, p in points.items():
                d[name] = np.delete(p, axis, axis=1)
            d["slice"] = (axis, k, tuple(int(s) for s in shape))
        return d


class PasteSliced(MapTransform):
    """Inverse of :class:`SelectSliced`: put a ``(C, H, W)`` result back into a zero volume
    at the recorded slice (no-op when ``data["slice"]`` is absent)."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if d.get("slice") is None:
            return d
        axis, k, shape = d["slice"]
        for key in self.key_iterator(d):
            arr = convert_to_numpy(d[key])
            volume = np.zeros((arr.shape[0],) + tuple(shape), dtype=arr.dtype)
            index = [slice(None)] * volume.ndim
            index[axis + 1] = k
            volume[tuple(index)] = arr
            d[key] = volume
        return d


class ApplyClicksd(MapTransform):
    """Force clicked voxels of the binary mask in ``keys`` (``(C, *spatial)``) to their
    labels: margin points and foreground clicks 1, background clicks 0 (after resampling
    to the original grid a clicked voxel could otherwise land on the other side)."""

    def __init__(
        self,
        keys: KeysCollection,
        margin_key: str = "margin_points",
        foreground_key: str = "fg_clicks",
        background_key: str = "bg_clicks",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.margin_key = margin_key
        self.foreground_key = foreground_key
        self.background_key = background_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = convert_to_numpy(d[key]).copy()
            ndim = mask.ndim - 1
            for k, value in ((self.margin_key, 1), (self.foreground_key, 1), (self.background_key, 0)):
                pts = stacked_points(d, (k,), ndim)
                if len(pts):
                    mask[(slice(None),) + tuple(pts.T)] = value
            d[key] = mask
        return d
