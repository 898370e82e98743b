"""An existing mask to start from instead of stage 1 (an automatic segmentation, an earlier
annotation): MONAI Label's ``/infer`` carries it as the optional ``label`` upload, and the
clicks then refine it (the paper's point that IF-GC does not depend on the network)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .validation import InvalidInputError, read_upload


def read_start_mask(path: str, spatial_shape: Sequence[int], slice_info: tuple | None = None) -> np.ndarray:
    """Read a binary mask file and check it against the image.

    Args:
        path: the uploaded file (any format MONAI's ``LoadImage`` reads).
        spatial_shape: the image's spatial shape (of the slice, for the 2D model on a volume).
        slice_info: ``(axis, index, volume_shape)`` of :class:`lib.transforms.clicks.SelectSliced`
            when the 2D model segments one slice of a volume: the mask may then be the
            volume's (its slice is taken) or the slice's.

    Returns:
        bool array of ``spatial_shape``.

    Raises:
        InvalidInputError: unreadable file, other shape, values other than 0 and 1, or an empty mask.
    """
    mask = read_upload(path, "label")
    mask = np.squeeze(mask) if mask.ndim > len(spatial_shape) else mask
    if slice_info is not None and mask.shape == tuple(slice_info[2]):
        axis, index, _ = slice_info
        mask = np.take(mask, index, axis=axis)
    if mask.shape != tuple(spatial_shape):
        raise InvalidInputError(f"label: the uploaded mask has shape {mask.shape}, the image {tuple(spatial_shape)}")
    values = np.unique(mask)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise InvalidInputError(f"label: the uploaded mask must be binary (0/1), it holds {shown}")
    if not values.any():
        raise InvalidInputError("label: the uploaded mask is empty; place interior margin points instead")
    return mask.astype(bool)


class LoadStartMaskd(MapTransform):
    """``data[mask_key]``: the mask file named by ``keys`` (e.g. ``start_label``) read and
    checked against the image ``data[image_key]`` (``(C, *spatial)``) by
    :func:`read_start_mask`; ``None`` when no file was given."""

    def __init__(self, keys: KeysCollection, image_key: str = "image", mask_key: str = "start_mask",
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d.setdefault(self.mask_key, None)
        for key in self.key_iterator(d):
            if d[key]:
                d[self.mask_key] = read_start_mask(str(d[key]), np.shape(d[self.image_key])[1:], d.get("slice"))
        return d
