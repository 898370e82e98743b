"""Intensity normalisation shared by the geodesic distance and the graph cut, and colour
images as one luminance channel."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


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


# ITU-R BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(image: np.ndarray) -> np.ndarray:
    """A colour image ``(3, H, W)`` (RGB) or ``(4, H, W)`` (RGBA, alpha dropped) as its
    luminance ``(1, H, W)`` float32 (BT.601 weights).

    Colour photographs (dermoscopy, fundus, endoscopy, histology) enter the single-channel
    networks this way: on the 60 PH2 dermoscopy images, which the 2D model of the previous
    release never saw, its stage 1 scored 0.906 on luminance against 0.872 on the red channel
    it used to get (green 0.906, blue 0.913; ``scripts/measure_colour_entry.py``); luminance
    favours no channel that suits one modality only."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] not in (3, 4):
        raise ValueError(f"expected a (3|4, H, W) colour image, got shape {arr.shape}")
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(3, 1, 1)
    return (arr[:3].astype(np.float32) * weights).sum(0, keepdims=True)


class Luminanced(MapTransform):
    """Channel-first 2D colour images in ``keys`` (``(3|4, H, W)``) become ``(1, H, W)``
    luminance (:func:`luminance`), keeping a MetaTensor's affine and meta data; single-channel
    images and volumes pass unchanged. For training on colour images the way the server
    reads them."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if np.ndim(image) == 3 and np.shape(image)[0] in (3, 4):
                grey = luminance(np.asarray(image))
                d[key] = MetaTensor(grey, affine=image.affine, meta=image.meta) if isinstance(image, MetaTensor) else grey
        return d
