"""A robot user that places corrective clicks, for evaluation and tests.

The click goes to the interior-most voxel (largest distance to the region's border, in mm
when spacing is given) of the largest connected error region: foreground when that region
is missed object (false negative), background when it is wrongly included (false positive).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from scipy import ndimage


def corrective_click(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | None = None,
    clicked: np.ndarray | None = None,
) -> tuple[np.ndarray, bool] | None:
    """Next corrective click.

    Args:
        prediction, reference: binary spatial masks of the same shape.
        spacing: physical voxel size (default 1).
        clicked: ``(N, ndim)`` voxels already clicked; never clicked again.

    Returns:
        ``(point, is_foreground)`` with ``point`` an ``(ndim,)`` int64 voxel index, or ``None``
        when there is no error left outside already-clicked voxels.
    """
    pred = np.asarray(prediction) > 0
    ref = np.asarray(reference) > 0
    if pred.shape != ref.shape:
        raise ValueError(f"robot user: prediction {pred.shape} and reference {ref.shape} differ in shape")
    sp = np.ones(ref.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    taken = np.zeros(ref.shape, dtype=bool)
    if clicked is not None and len(np.asarray(clicked).reshape(-1)):
        taken[tuple(np.asarray(clicked, dtype=np.int64).reshape(-1, ref.ndim).T)] = True

    regions = []
    for error, is_fg in ((ref & ~pred & ~taken, True), (pred & ~ref & ~taken, False)):
        labels, n = ndimage.label(error)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            best = int(np.argmax(sizes)) + 1
            regions.append((int(sizes[best - 1]), labels == best, is_fg))
    if not regions:
        return None
    _, region, is_fg = max(regions, key=lambda r: r[0])
    # Pad so the image border counts as the region's border too.
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=sp)[(slice(1, -1),) * ref.ndim]
    point = np.array(np.unravel_index(int(np.argmax(depth)), ref.shape), dtype=np.int64)
    return point, is_fg


class AddCorrectiveClickd(MapTransform):
    """Append the robot's next click to ``data[foreground_key]`` or ``data[background_key]``.

    ``keys`` name the current prediction (``(1, *spatial)``); the reference label is
    ``data[label_key]``. Clicks are ``(N, ndim)`` int64; margin points in
    ``data[margin_key]`` count as already clicked. Leaves the clicks unchanged when the
    prediction is perfect.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        foreground_key: str = "foreground",
        background_key: str = "background",
        margin_key: str = "margin_points",
        spacing_key: str = "spacing",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.foreground_key = foreground_key
        self.background_key = background_key
        self.margin_key = margin_key
        self.spacing_key = spacing_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = convert_to_numpy(d[key])[0]
            ndim = pred.ndim
            clicks = {k: np.asarray(d.get(k, []), dtype=np.int64).reshape(-1, ndim) for k in
                      (self.foreground_key, self.background_key, self.margin_key)}
            click = corrective_click(
                pred, convert_to_numpy(d[self.label_key])[0], d.get(self.spacing_key), np.concatenate(list(clicks.values()))
            )
            if click is not None:
                point, is_fg = click
                target = self.foreground_key if is_fg else self.background_key
                d[target] = np.concatenate([clicks[target], point[None]])
        return d
