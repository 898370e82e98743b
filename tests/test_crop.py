"""Relaxed box, crop + resize and its inverse, and the dictionary transforms."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.crop import (
    CropByMarginPointsd,
    work_grid_size,
    RestoreFromCropd,
    crop_and_resize,
    crop_spacing,
    points_to_crop,
    relaxed_box,
    resample,
    restore_from_crop,
)
from lib.transforms.margin_points import extreme_margin_points
from tests.conftest import dice_np, ellipsoid_mask, noisy_image


# --- relaxed box --------------------------------------------------------------------------------


def test_relaxed_box_hand_case():
    # extents 41 x 11 voxels: margin max(5, 4.1) = 5 and max(5, 1.1) = 5
    box = relaxed_box(np.array([[20, 30], [60, 40]]), (100, 100))
    np.testing.assert_array_equal(box, [[15, 25], [66, 46]])
    # a large extent gets 10 % margin: 101 voxels -> ceil(10.1) = 11
    box = relaxed_box(np.array([[50, 50], [150, 52]]), (300, 300))
    np.testing.assert_array_equal(box, [[39, 45], [162, 58]])


def test_relaxed_box_margin_is_physical_with_spacing():
    # columns of 0.5 mm: 5 mm minimum margin = 10 voxels
    box = relaxed_box(np.array([[20, 30], [60, 40]]), (100, 100), spacing=(1.0, 0.5))
    np.testing.assert_array_equal(box, [[15, 20], [66, 51]])


def test_relaxed_box_is_clipped_to_the_image():
    box = relaxed_box(np.array([[1, 2, 0], [10, 30, 3]]), (12, 32, 4))
    np.testing.assert_array_equal(box, [[0, 0, 0], [12, 32, 4]])


# --- points_to_crop -----------------------------------------------------------------------------


def test_points_to_crop_identity_size_is_a_shift():
    box = np.array([[10, 20], [50, 40]])
    pts = np.array([[10, 20], [49, 39], [30, 25]])
    np.testing.assert_array_equal(points_to_crop(pts, box, (40, 20)), pts - box[0])


def test_points_to_crop_corners_and_centre():
    box = np.array([[10, 5, 0], [51, 46, 9]])  # 41 x 41 x 9 voxels
    out = (21, 81, 9)
    corners = np.array([[10, 5, 0], [50, 45, 8]])
    np.testing.assert_array_equal(points_to_crop(corners, box, out), [[0, 0, 0], [20, 80, 8]])
    centre = np.array([[30, 25, 4]])
    np.testing.assert_array_equal(points_to_crop(centre, box, out), [[10, 40, 4]])


def test_points_to_crop_clips_points_outside_the_box():
    box = np.array([[10, 10], [20, 20]])
    np.testing.assert_array_equal(points_to_crop(np.array([[0, 30]]), box, (5, 5)), [[0, 4]])


@pytest.mark.parametrize("point", [(17, 40), (33, 61), (45, 22)])
def test_points_to_crop_agrees_with_the_resized_image(point):
    box = np.array([[12, 15], [52, 75]])  # 40 x 60 -> 64 x 48: up along rows, down along columns
    img = np.zeros((1, 80, 80), dtype=np.float32)
    img[(0,) + point] = 1.0
    from scipy import ndimage

    img[0] = ndimage.gaussian_filter(img[0], 2.0)
    crop = crop_and_resize(img, box, (64, 48))
    peak = np.unravel_index(np.argmax(crop[0]), crop.shape[1:])
    mapped = points_to_crop(np.array([point]), box, (64, 48))[0]
    assert np.all(np.abs(np.array(peak) - mapped) <= 1), (peak, mapped)


# --- crop -> restore round trip -----------------------------------------------------------------


def _round_trip_dice(mask, box, size):
    crop = crop_and_resize(mask[None].astype(np.float32), box, size, mode="bilinear")
    assert crop.shape == (1,) + tuple(size) and crop.dtype == np.float32
    restored = restore_from_crop(crop, box, mask.shape, mode="bilinear")
    assert restored.shape == (1,) + mask.shape
    outside = np.ones(mask.shape, dtype=bool)
    outside[tuple(slice(a, b) for a, b in zip(box[0], box[1]))] = False
    assert np.all(restored[0][outside] == 0.0)
    return dice_np(restored[0] > 0.5, mask)


@pytest.mark.parametrize(
    "shape, size, mode",
    [((1, 177, 100, 72), (48, 27, 20), "bilinear"), ((2, 300, 211, 30), (64, 50, 30), "bilinear"),
     ((1, 120, 50, 40), (200, 30, 40), "bilinear"), ((1, 512, 300), (64, 64), "bilinear"),
     ((1, 90, 70, 20), (30, 30, 10), "nearest"), ((1, 40, 30), (80, 90), "bilinear")],
)
def test_resample_is_monai_resize(shape, size, mode):
    """The scipy anti-aliasing computes what MONAI's anti-aliased Resize does (shrinking,
    enlarging, mixed axes, nearest), so the networks see the inputs they were trained on."""
    from monai.transforms import Resize

    arr = np.random.default_rng(0).normal(100.0, 40.0, shape).astype(np.float32)
    torch_mode = ("bilinear" if len(size) == 2 else "trilinear") if mode == "bilinear" else "nearest-exact"
    expected = np.asarray(Resize(size, mode=torch_mode, anti_aliasing=mode != "nearest")(arr))
    np.testing.assert_allclose(resample(arr, size, mode), expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("size", [(64, 64), (160, 96)])
def test_round_trip_2d(size):
    mask = ellipsoid_mask((200, 180), (90, 100), 40)
    box = relaxed_box(extreme_margin_points(mask), mask.shape)
    assert _round_trip_dice(mask, box, size) > 0.97


def test_round_trip_2d_box_clipped_at_the_border(border_disk_2d):
    mask = border_disk_2d[1]
    box = relaxed_box(extreme_margin_points(mask), mask.shape)
    assert box[0, 0] == 0  # really clipped
    assert _round_trip_dice(mask, box, (48, 48)) > 0.97


@pytest.mark.parametrize("size", [(32, 32, 24), (48, 40, 40)])
def test_round_trip_3d(size):
    mask = ellipsoid_mask((60, 56, 40), (30, 26, 20), 15)
    box = relaxed_box(extreme_margin_points(mask), mask.shape)
    assert _round_trip_dice(mask, box, size) > 0.97


def test_round_trip_3d_clipped_anisotropic():
    spacing = (1.0, 1.0, 3.0)
    mask = ellipsoid_mask((50, 50, 12), (25, 45, 2), 14, spacing)  # touches two borders
    box = relaxed_box(extreme_margin_points(mask, spacing), mask.shape, spacing)
    assert box[1, 1] == 50 and box[0, 2] == 0
    assert _round_trip_dice(mask, box, (32, 32, 16)) > 0.97


def test_restore_fill_value_and_nearest_mode():
    crop = np.ones((1, 4, 4), dtype=np.float32)
    box = np.array([[2, 3], [10, 11]])
    out = restore_from_crop(crop, box, (12, 14), mode="nearest", fill=-1.0)
    assert np.all(out[0, 2:10, 3:11] == 1.0)
    assert np.sum(out == -1.0) == 12 * 14 - 64


def test_nearest_crop_keeps_label_values():
    label = np.zeros((1, 40, 40), dtype=np.uint8)
    label[0, 10:30, 12:25] = 3
    crop = crop_and_resize(label, np.array([[5, 5], [35, 35]]), (17, 23), mode="nearest")
    assert set(np.unique(crop).tolist()) == {0.0, 3.0}


def test_crop_spacing():
    box = np.array([[0, 10, 5], [96, 58, 21]])
    np.testing.assert_allclose(crop_spacing(box, (48, 48, 32), (0.5, 1.0, 2.0)), [1.0, 1.0, 1.0])


# --- dictionary transforms ----------------------------------------------------------------------


def test_crop_and_restore_dict_2d(disk_2d):
    image, mask = disk_2d
    pts = extreme_margin_points(mask)
    fg = np.array([[30, 34]])
    data = {"image": image, "label": mask[None].astype(np.uint8), "margin_points": pts, "foreground": fg}
    out = CropByMarginPointsd(("image", "label"), (48, 48), mode=("bilinear", "nearest"))(data)
    box = relaxed_box(pts, mask.shape)
    np.testing.assert_array_equal(out["crop_box"], box)
    np.testing.assert_array_equal(out["crop_original_shape"], mask.shape)
    np.testing.assert_allclose(out["crop_spacing"], (box[1] - box[0]) / 48.0)
    assert out["image"].shape == (1, 48, 48) and out["label"].shape == (1, 48, 48)
    np.testing.assert_array_equal(out["margin_points_crop"], points_to_crop(pts, box, (48, 48)))
    np.testing.assert_array_equal(out["foreground_crop"], points_to_crop(fg, box, (48, 48)))
    assert "background_crop" not in out
    # the crop points fall on the object in the cropped label
    assert np.all(out["label"][0][tuple(out["margin_points_crop"].T)] == 1)
    # the input dict is left untouched
    assert data["image"].shape == (1, 64, 64)

    restored = RestoreFromCropd("label", mode="nearest")(out)
    assert restored["label"].shape == (1, 64, 64)
    assert dice_np(restored["label"][0] > 0.5, mask) > 0.97


def test_crop_and_restore_dict_3d_with_spacing(aniso_ball_3d):
    image, mask, spacing = aniso_ball_3d
    pts = extreme_margin_points(mask, spacing)
    data = {"image": image, "label": mask[None].astype(np.float32), "margin_points": pts, "spacing": spacing}
    out = CropByMarginPointsd(("image", "label"), (32, 32, 16), prefix="roi")(data)
    box = relaxed_box(pts, mask.shape, spacing)
    np.testing.assert_array_equal(out["roi_box"], box)
    np.testing.assert_array_equal(out["margin_points_roi"], points_to_crop(pts, box, (32, 32, 16)))
    assert "crop_box" not in out and "margin_points_crop" not in out
    np.testing.assert_allclose(out["roi_spacing"], (box[1] - box[0]) * np.array(spacing) / [32, 32, 16])
    assert out["image"].shape == (1, 32, 32, 16)
    restored = RestoreFromCropd("label", prefix="roi")(out)
    assert dice_np(restored["label"][0] > 0.5, mask) > 0.97


def test_restore_dict_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    data = {
        "pred": torch.ones((1, 8, 8)),
        "crop_box": np.array([[4, 4], [12, 12]]),
        "crop_original_shape": np.array([20, 20]),
    }
    out = RestoreFromCropd("pred", fill=0.0)(data)
    assert isinstance(out["pred"], np.ndarray) and out["pred"].sum() == 64
    assert np.all(out["pred"][0, 4:12, 4:12] == 1)


def test_crop_dict_with_metatensor_pixdim():
    monai_data = pytest.importorskip("monai.data")
    mask = ellipsoid_mask((40, 40, 16), (20, 18, 8), 10, (1.0, 1.0, 3.0))
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    image = monai_data.MetaTensor(noisy_image(mask), affine=affine)
    pts = extreme_margin_points(mask, (1.0, 1.0, 3.0))
    out = CropByMarginPointsd("image", (16, 16, 8))({"image": image, "margin_points": pts})
    np.testing.assert_array_equal(out["crop_box"], relaxed_box(pts, mask.shape, (1.0, 1.0, 3.0)))


@pytest.mark.parametrize("size", [(48, 48), (30, 30)])
def test_nearest_crop_keeps_the_label_centred(size):
    # voxel-centre aligned nearest resampling: no half-voxel drift of labels against images
    label = np.zeros((1, 60, 60), dtype=np.float32)
    label[0, 20:41, 24:37] = 1
    box = np.array([[10, 10], [51, 51]])
    crop = crop_and_resize(label, box, size, mode="nearest")
    centre_crop = (np.argwhere(crop[0] > 0).mean(0) + 0.5) * 41 / np.array(size) - 0.5 + 10
    np.testing.assert_allclose(centre_crop, np.argwhere(label[0] > 0).mean(0), atol=0.3)
    back = restore_from_crop(crop, box, (60, 60), mode="nearest")
    assert dice_np(back[0], label[0]) > 0.95


def test_crop_dict_at_original_resolution_with_voxel_budget(disk_2d):
    image, mask = disk_2d
    pts = extreme_margin_points(mask)
    box = relaxed_box(pts, mask.shape)
    extent = tuple(int(v) for v in box[1] - box[0])
    # a budget larger than the box: original resolution, the crop is a plain cut-out
    out = CropByMarginPointsd("image", None, max_voxels=10**6)({"image": image, "margin_points": pts})
    assert out["image"].shape == (1,) + extent
    np.testing.assert_allclose(out["image"][0], image[0][box[0, 0]:box[1, 0], box[0, 1]:box[1, 1]], atol=1e-6)
    np.testing.assert_array_equal(out["margin_points_crop"], pts - box[0])
    # a smaller budget shrinks every axis by the same factor
    size = work_grid_size(box, 400)
    assert np.prod(size) <= 400 * 1.1 and size[0] / size[1] == pytest.approx(extent[0] / extent[1], rel=0.1)
    out = CropByMarginPointsd("image", None, max_voxels=400)({"image": image, "margin_points": pts})
    assert out["image"].shape == (1,) + size
    with pytest.raises(ValueError, match="spatial_size or max_voxels"):
        CropByMarginPointsd("image", None)

