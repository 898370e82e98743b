"""The click-cue channel of the stage-1 network input, and the encodings it is compared with.

MIDeepSeg encodes the interior margin points as their exponentialized geodesic distance
(EGD, :mod:`.egd`). The paper compares it with other encodings of the same points
(Tables 2 and 6); each is a map on the cropped image, float32, one value per voxel:

* ``"egd"``: ``exp(-D_geo)`` (the method's own; 1 at the points),
* ``"geodesic"``: the plain geodesic distance ``D_geo`` divided by its maximum over the
  crop (0 at the points, 1 at the farthest voxel),
* ``"euclidean"``: Euclidean distance to the nearest point divided by the crop's longest
  side (voxel units: the crop is resampled to the network grid),
* ``"gaussian"``: the largest of Gaussians centred on the points, standard deviation
  ``GAUSSIAN_SIGMA_FRACTION`` of the longest side (1 at the points),
* ``"box"``: zeros; the points enter only through the relaxed box that crops the image.

A network must be used with the encoding it was trained with (``cue`` of the infer task
and of the trainer).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from .egd import GEODESIC_ITERATIONS, exponentialized_geodesic_distance, geodesic_distance
from .validation import points_to_mask, validate_points

CUE_ENCODINGS = ("egd", "geodesic", "euclidean", "gaussian", "box")
GAUSSIAN_SIGMA_FRACTION = 0.05


def check_encoding(encoding: str) -> str:
    if encoding not in CUE_ENCODINGS:
        raise ValueError(f"cue encoding must be one of {CUE_ENCODINGS}, got {encoding!r}")
    return encoding


def cue_map(image: np.ndarray, points: np.ndarray, encoding: str = "egd") -> np.ndarray:
    """The cue of ``points`` (``(N, ndim)`` voxel indices) on ``image`` (spatial, no channel).

    Returns float32 of the image's shape (see the module doc for each encoding's range);
    zeros when there are no points.
    """
    img = np.asarray(image)
    check_encoding(encoding)
    if encoding == "box" or len(np.asarray(points).reshape(-1)) == 0:
        return np.zeros(img.shape, dtype=np.float32)
    if encoding == "egd":
        return exponentialized_geodesic_distance(img, points, GEODESIC_ITERATIONS)
    if encoding == "geodesic":
        dist = geodesic_distance(img, points, GEODESIC_ITERATIONS)
        peak = float(dist.max())
        return (dist / peak if peak > 0 else dist).astype(np.float32)
    pts = validate_points(points, img.shape, "cue points", min_count=1, allow_duplicates=True)
    far = ndimage.distance_transform_edt(points_to_mask(pts, img.shape) == 0) / float(max(img.shape))
    if encoding == "euclidean":
        return far.astype(np.float32)
    sigma = GAUSSIAN_SIGMA_FRACTION  # in units of the longest side, like ``far``
    return np.exp(-0.5 * (far / sigma) ** 2).astype(np.float32)


class AddCueMapd(MapTransform):
    """Add the cue map (:func:`cue_map`) of ``data[points_key]`` computed on ``data[key]``.

    ``keys`` name the (cropped) image, ``(C, *spatial)``; the first channel is used. The cue
    is written to ``data[cue_key]`` as ``(1, *spatial)`` float32. Concatenate it with the
    image with MONAI's ``ConcatItemsd``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        encoding: str = "egd",
        points_key: str = "margin_points_crop",
        cue_key: str = "cue",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encoding = check_encoding(encoding)
        self.points_key = points_key
        self.cue_key = cue_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_numpy(d[key])[0]
            cue = cue_map(image, d[self.points_key], self.encoding)
            d[self.cue_key] = convert_to_dst_type(cue[None], d[key], dtype=np.float32)[0]
        return d
