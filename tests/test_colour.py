"""Colour images enter as one luminance channel, the same way in the server's loader and in
training (issue 13): a lesion that differs from its surroundings in green and blue only (the
red channel is flat, which is all the pipeline used to see) is segmented from the RGB file
exactly as from its luminance saved as a grey image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from configs.midepseg import MIDeepSeg2DConfig
from lib.infers.image_cache import ImageLoader
from lib.metrics import dice
from lib.trainers.midepseg_train import MIDeepSegTrain
from lib.networks import midepseg_unet
from lib.transforms.intensity import LUMA_WEIGHTS, Luminanced, luminance
from lib.transforms.margin_points import extreme_margin_points
from tests.conftest import APP_MODELS, ellipsoid_mask, stage1_mask

@pytest.fixture(scope="module")
def lesion(tmp_path_factory):
    """An RGB PNG (160 x 120) of a blob whose red channel equals the background's, and the
    same picture's luminance as a grey PNG."""
    rng = np.random.RandomState(0)
    mask = ellipsoid_mask((120, 160), (60, 75), 30) | ellipsoid_mask((120, 160), (45, 100), 18)
    rgb = np.empty((120, 160, 3), np.float32)
    rgb[..., 0] = 170.0
    rgb[..., 1] = np.where(mask, 60.0, 150.0)
    rgb[..., 2] = np.where(mask, 50.0, 140.0)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("colour")
    Image.fromarray(rgb, "RGB").save(folder / "lesion.png")
    grey = np.clip(np.round(rgb.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)), 0, 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(folder / "lesion_grey.png")
    Image.fromarray(mask.astype(np.uint8), "L").save(folder / "label.png")
    return folder, mask.T  # (x, y): MONAI's PNG order


def test_luminance_weights_and_rgba():
    rgba = np.random.RandomState(1).rand(4, 5, 6).astype(np.float32)
    grey = luminance(rgba)
    assert grey.shape == (1, 5, 6)
    np.testing.assert_allclose(grey[0], 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2], rtol=1e-6)
    single = np.zeros((1, 5, 6), np.float32)
    assert Luminanced("image")({"image": single})["image"] is single, "grey images pass unchanged"
    with pytest.raises(ValueError, match="colour image"):
        luminance(single)


def test_loader_reads_rgb_as_luminance(lesion):
    folder, mask = lesion
    image, _ = ImageLoader().load(str(folder / "lesion.png"))
    assert tuple(image.shape) == (1, *mask.shape)
    inside, outside = float(image[0][mask].mean()), float(image[0][~mask].mean())
    assert outside - inside > 40, "the lesion must be visible in what the networks get"


def test_rgb_segments_like_its_luminance(lesion):
    folder, mask = lesion
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP_MODELS), {}, None)
    task = config.infer()
    points = extreme_margin_points(mask, (1.0, 1.0))

    colour, grey = (stage1_mask(task, folder / name, points).reshape(mask.shape) for name in ("lesion.png", "lesion_grey.png"))
    assert dice(colour, mask) > 0.9
    assert dice(colour, grey) > 0.99  # the grey PNG rounds the luminance to integers


def test_training_reads_rgb_as_luminance(lesion, tmp_path):
    folder, mask = lesion
    task = MIDeepSegTrain(str(tmp_path), midepseg_unet(2), 2, (64, 64), str(tmp_path / "m.pt"))
    load = task.val_pre_transforms(None)
    data = {"image": str(folder / "lesion.png"), "label": str(folder / "label.png")}
    for transform in load:
        data = transform(data)
    assert tuple(data["image"].shape) == (2, 64, 64), "image + cue: one image channel"
