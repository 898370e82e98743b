"""The click contract (margin points vs refinement clicks, one slice for the 2D model) and
the image loader's one-time checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lib.infers.image_cache import CachedLoadImaged
from lib.transforms.clicks import ApplyClicksd, ParseClicksd, PasteSliced, SelectSliced, split_clicks


def test_first_n_foreground_points_are_margin_points():
    fg = [[1, 1], [2, 5], [8, 3], [9, 9], [4, 4], [5, 6]]
    margin, refine, bg = split_clicks(fg, [[0, 9]], (10, 10), 4)
    assert margin.tolist() == fg[:4]
    assert refine.tolist() == fg[4:]
    assert bg.tolist() == [[0, 9]]


def test_background_waits_until_margin_points_are_complete_and_duplicates_collapse():
    margin, refine, bg = split_clicks([[1, 1], [1, 1], [3, 3]], [[0, 0]], (10, 10), 4)
    assert margin.tolist() == [[1, 1], [3, 3]]
    assert len(refine) == 0 and len(bg) == 0


@pytest.mark.parametrize(
    "fg, bg, count, message",
    [
        ([], [], 4, "no points"),
        ([[1, 1]], [[1, 1]], 4, "both foreground and background"),
        ([[1, 1], [20, 1]], [], 4, "outside"),
        ([[1, 1, 1]], [], 4, "coordinates"),
        ([["a", 1]], [], 4, "numbers"),
        ([[1, 1]], [], 1, "at least 2"),
    ],
)
def test_split_clicks_rejects_bad_requests(fg, bg, count, message):
    with pytest.raises(ValueError, match=message):
        split_clicks(fg, bg, (10, 10), count)


def test_parse_clicks_reads_the_count_from_the_request():
    data = {"image": np.zeros((1, 10, 10)), "foreground": [[1, 1], [2, 2], [3, 3]], "background": [], "margin_count": "2"}
    out = ParseClicksd("image", default_count=4)(data)
    assert out["margin_points"].tolist() == [[1, 1], [2, 2]] and out["fg_clicks"].tolist() == [[3, 3]]
    assert out["foreground"] == data["foreground"], "the request's point list keeps its meaning"
    with pytest.raises(ValueError, match="margin_points must be an integer"):
        ParseClicksd("image", default_count=4)({**data, "margin_count": "abc"})


def test_select_and_paste_slice_round_trip():
    volume = np.random.RandomState(0).rand(1, 8, 9, 5).astype(np.float32)
    data = {"image": volume, "foreground": [[1, 2, 3], [4, 5, 3]], "background": [[7, 7, 3]]}
    out = SelectSliced("image")(data)
    np.testing.assert_array_equal(out["image"], volume[..., 3])
    assert out["foreground"].tolist() == [[1, 2], [4, 5]] and out["background"].tolist() == [[7, 7]]
    out["pred"] = np.ones((1, 8, 9), np.uint8)
    pasted = PasteSliced("pred")(out)["pred"]
    assert pasted.shape == (1, 8, 9, 5) and pasted[..., 3].all() and pasted.sum() == 8 * 9
    with pytest.raises(ValueError, match="same index"):
        SelectSliced("image")({**data, "background": [[7, 7, 2]]})


def test_apply_clicks_forces_clicked_voxels():
    mask = np.zeros((1, 6, 6), np.uint8)
    mask[0, 4, 4] = 1
    out = ApplyClicksd("pred")({"pred": mask, "margin_points": [[0, 0]], "fg_clicks": [[2, 3]], "bg_clicks": [[4, 4]]})
    assert out["pred"][0, 0, 0] == 1 and out["pred"][0, 2, 3] == 1 and out["pred"][0, 4, 4] == 0
    assert mask[0, 4, 4] == 1, "the input mask must not be modified in place"


def test_loader_checks_the_image_once_and_names_the_file(tmp_path):
    good, flat = tmp_path / "good.nii.gz", tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.RandomState(0).rand(6, 7, 8).astype(np.float32), np.eye(4)), good)
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.eye(4)), flat)
    loader = CachedLoadImaged("image")
    first = loader({"image": str(good)})["image"]
    assert first.shape == (1, 6, 7, 8)
    assert loader({"image": str(good)})["image"] is first, "second click must reuse the loaded image"
    with pytest.raises(ValueError, match="flat.nii.gz.*constant"):
        loader({"image": str(flat)})
