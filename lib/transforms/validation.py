"""Checks of inputs (images and click coordinates) that raise
:class:`InvalidInputError` (a ``ValueError``) naming the problem.

Points are voxel indices of a channel-first image, given as an ``(N, ndim)`` integer
array (or anything ``np.asarray`` turns into one), in the same axis order as the
image's spatial axes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class InvalidInputError(ValueError):
    """The caller's input (image, points, request parameters, an uploaded file) is wrong.

    The server answers it with HTTP 400 and this message; any other exception inside the
    pipeline is a fault of the server (HTTP 500), never blamed on the request.
    """


def read_upload(path: str, what: str) -> np.ndarray:
    """An uploaded image file (``LoadImage``'s axis order) as an array; a file no reader
    understands raises :class:`InvalidInputError` naming ``what``, a ``MemoryError`` (the
    server's fault, not the upload's) passes through."""
    from monai.transforms import LoadImage

    try:
        return np.asarray(LoadImage(image_only=True)(path))
    except MemoryError:
        raise
    except Exception as e:  # any reader failure: the upload is not an image
        raise InvalidInputError(f"{what}: the uploaded file is not a readable image ({type(e).__name__})") from None


def as_points(points: Sequence | np.ndarray | None, ndim: int, name: str = "points") -> np.ndarray:
    """Convert ``points`` into an ``(N, ndim)`` int64 array, checking only their form.

    Raises:
        InvalidInputError: when a value is not numeric, not integral, or a point has the wrong
            number of coordinates.
    """
    if points is None:
        return np.zeros((0, ndim), dtype=np.int64)
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name}: coordinates must be numbers, got {points!r}") from e
    if arr.size == 0:
        return np.zeros((0, ndim), dtype=np.int64)
    if arr.ndim == 1 and arr.shape[0] == ndim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise InvalidInputError(
            f"{name}: each point needs exactly {ndim} coordinates (got an array of shape {arr.shape})"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: coordinates must be finite numbers")
    rounded = np.rint(arr)
    if np.any(np.abs(arr - rounded) > 1e-6):
        raise InvalidInputError(f"{name}: coordinates must be integer voxel indices, got {arr.tolist()}")
    return rounded.astype(np.int64)


def validate_points(
    points: Sequence | np.ndarray | None,
    spatial_shape: Sequence[int],
    name: str = "points",
    min_count: int = 0,
    allow_duplicates: bool = False,
) -> np.ndarray:
    """Check click coordinates against an image and return them as ``(N, ndim)`` int64.

    Args:
        points: voxel indices, ``(N, ndim)``.
        spatial_shape: the image's spatial shape (no channel axis).
        name: what the points are, used in error messages.
        min_count: the least number of points required.
        allow_duplicates: accept the same voxel twice.

    Raises:
        InvalidInputError: naming the problem (too few points, a point outside the image,
            wrong number of coordinates, duplicated points).
    """
    shape = np.asarray(spatial_shape, dtype=np.int64)
    arr = as_points(points, len(shape), name)
    if len(arr) < min_count:
        raise InvalidInputError(f"{name}: at least {min_count} points are needed, got {len(arr)}")
    outside = np.any((arr < 0) | (arr >= shape[None]), axis=1)
    if np.any(outside):
        raise InvalidInputError(
            f"{name}: point(s) {arr[outside].tolist()} lie outside the image of shape {tuple(shape.tolist())}"
        )
    if not allow_duplicates and len(np.unique(arr, axis=0)) != len(arr):
        raise InvalidInputError(f"{name}: the same voxel is given more than once: {arr.tolist()}")
    return arr


def points_to_mask(points: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Binary uint8 seed image of ``spatial_shape`` that is 1 at every point."""
    mask = np.zeros(tuple(spatial_shape), dtype=np.uint8)
    if len(points):
        mask[tuple(np.asarray(points).T)] = 1
    return mask


def check_image(image: np.ndarray, name: str = "image", require_contrast: bool = True) -> np.ndarray:
    """Check a channel-first image with 2 or 3 spatial axes and return it as a numpy array.

    Raises:
        InvalidInputError: if it is not ``(C, H, W)`` or ``(C, H, W, D)``, has no voxels, holds
            non-finite values, or (with ``require_contrast``) is constant.
    """
    arr = np.asarray(image)
    if arr.ndim not in (3, 4):
        raise InvalidInputError(
            f"{name}: expected a channel-first 2D (C,H,W) or 3D (C,H,W,D) array, got shape {arr.shape}"
        )
    if arr.size == 0 or min(arr.shape) == 0:
        raise InvalidInputError(f"{name}: the image is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InvalidInputError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: the image holds NaN or infinite values")
    if require_contrast and float(arr.max()) == float(arr.min()):
        raise InvalidInputError(f"{name}: the image is constant (every voxel is {float(arr.min())}); nothing to segment")
    return arr


def stacked_points(data: Mapping, keys: tuple[str, ...], ndim: int) -> np.ndarray:
    """The ``(N, ndim)`` int64 concatenation of the point lists ``data[k]`` (missing = empty),
    each checked by :func:`as_points`."""
    parts = [as_points(data.get(k), ndim, str(k)) for k in keys]
    return np.concatenate(parts) if parts else np.zeros((0, ndim), dtype=np.int64)


def unique_points(points: np.ndarray) -> np.ndarray:
    """``(N, ndim)`` points without repeats, each kept at its first position."""
    if len(points) == 0:
        return points
    _, first = np.unique(points, axis=0, return_index=True)
    return points[np.sort(first)]
