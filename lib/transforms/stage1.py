"""The stage-1 input chain shared by training, validation and inference: margin points ->
relaxed-box crop resized to the network grid -> z-score inside the crop -> EGD cue ->
2-channel network input."""

from __future__ import annotations

from typing import Sequence

from monai.transforms import ConcatItemsd, NormalizeIntensityd

from .crop import CropByMarginPointsd
from .cues import AddCueMapd


def crop_transforms(spatial_size: Sequence[int], keys: Sequence[str] = ("image",), modes: Sequence[str] = ("bilinear",)) -> list:
    """Relaxed-box crop of ``keys`` to ``spatial_size``, then z-score of the image inside it."""
    return [
        CropByMarginPointsd(keys=list(keys), spatial_size=spatial_size, mode=list(modes)),
        NormalizeIntensityd(keys="image"),
    ]


def cue_transforms(encoding: str = "egd") -> list:
    """Cue map of the margin points on the cropped image (EGD unless another ``encoding`` of
    :mod:`.cues` is asked for), stacked as channel 2 of ``image``."""
    return [
        AddCueMapd(keys="image", encoding=encoding, points_key="margin_points_crop", cue_key="cue"),
        ConcatItemsd(keys=["image", "cue"], name="image"),
    ]
