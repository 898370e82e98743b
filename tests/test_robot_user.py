"""The robot user's corrective clicks."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.robot_user import AddCorrectiveClickd, corrective_click


def _fn_fp_case():
    """Reference: a 21x21 square (rows/cols 10..30) and a 5x5 square (rows 50..54, cols 50..54);
    prediction: misses the big square entirely (false negative) and adds a 7x7 square at
    rows/cols 40..46 (false positive); the small square is found."""
    ref = np.zeros((64, 64), dtype=np.uint8)
    ref[10:31, 10:31] = 1
    ref[50:55, 50:55] = 1
    pred = np.zeros_like(ref)
    pred[50:55, 50:55] = 1
    pred[40:47, 40:47] = 1
    return pred, ref


def test_click_goes_to_the_centre_of_the_largest_error():
    pred, ref = _fn_fp_case()
    point, is_fg = corrective_click(pred, ref)
    assert point.dtype == np.int64
    np.testing.assert_array_equal(point, [20, 20])
    assert is_fg is True


def test_false_positive_click_is_background():
    pred, ref = _fn_fp_case()
    pred2 = pred.copy()
    pred2[10:31, 10:31] = 1  # the big square is found now: only the 7x7 FP is left
    point, is_fg = corrective_click(pred2, ref)
    np.testing.assert_array_equal(point, [43, 43])
    assert is_fg is False


def test_largest_region_wins_over_kind():
    # a big FP region and a small FN region: the click is background
    ref = np.zeros((40, 40), dtype=np.uint8)
    ref[5:8, 5:8] = 1
    pred = np.zeros_like(ref)
    pred[15:30, 15:30] = 1
    point, is_fg = corrective_click(pred, ref)
    assert not is_fg and tuple(point) == (22, 22)


def test_interior_most_point_of_an_irregular_region():
    # an L-shaped error: a 5-wide stem and an 11x11 block; the click is the block's centre
    ref = np.zeros((40, 40), dtype=np.uint8)
    ref[5:35, 5:10] = 1
    ref[20:31, 10:21] = 1
    point, is_fg = corrective_click(np.zeros_like(ref), ref)
    assert is_fg and mask_depth_is_max(ref, point)
    assert 20 <= point[0] <= 30 and 10 <= point[1] <= 20


def mask_depth_is_max(region, point):
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return depth[tuple(point)] == depth.max()


def test_spacing_is_used_for_the_depth():
    # one connected error: a 3 x 21 bar (rows 10..12) joined to a 7 x 7 block (rows 8..14)
    ref = np.zeros((24, 40), dtype=np.uint8)
    ref[10:13, 5:26] = 1
    ref[8:15, 26:33] = 1
    iso, _ = corrective_click(np.zeros_like(ref), ref)
    np.testing.assert_array_equal(iso, [11, 29])  # block centre: depth 4 vs 2 in the bar
    # 4 mm rows: the bar is 8 mm deep, the block only 4 mm (its columns)
    aniso, _ = corrective_click(np.zeros_like(ref), ref, spacing=(4.0, 1.0))
    assert aniso[0] == 11 and 5 <= aniso[1] <= 25


def test_never_clicks_an_already_clicked_voxel():
    pred, ref = _fn_fp_case()
    clicked = np.array([[20, 20]])
    point, is_fg = corrective_click(pred, ref, clicked=clicked)
    assert is_fg and tuple(point) != (20, 20)
    assert ref[tuple(point)] == 1 and pred[tuple(point)] == 0
    assert 10 <= point[0] <= 30 and 10 <= point[1] <= 30  # still in the big missed square
    # repeatedly: every click is new
    seen = [tuple(p) for p in clicked]
    for _ in range(5):
        point, _ = corrective_click(pred, ref, clicked=np.array(seen))
        assert tuple(point) not in seen
        seen.append(tuple(point))


def test_single_voxel_error_already_clicked_gives_none():
    ref = np.zeros((10, 10), dtype=np.uint8)
    ref[4, 4] = 1
    pred = np.zeros_like(ref)
    assert corrective_click(pred, ref, clicked=[[4, 4]]) is None
    point, is_fg = corrective_click(pred, ref)
    assert tuple(point) == (4, 4) and is_fg


def test_none_when_prediction_is_perfect(ball_3d):
    mask = ball_3d[1].astype(np.uint8)
    assert corrective_click(mask, mask) is None
    assert corrective_click(np.zeros((5, 5)), np.zeros((5, 5))) is None


def test_3d_click():
    ref = np.zeros((30, 30, 20), dtype=np.uint8)
    ref[5:16, 5:16, 3:14] = 1  # 11^3 cube, centre (10, 10, 8)
    pred = np.zeros_like(ref)
    pred[20:23, 20:23, 15:18] = 1  # small FP
    point, is_fg = corrective_click(pred, ref)
    np.testing.assert_array_equal(point, [10, 10, 8])
    assert is_fg


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        corrective_click(np.zeros((4, 4)), np.zeros((4, 5)))


def test_dict_transform_appends_to_the_right_key():
    pred, ref = _fn_fp_case()
    data = {
        "pred": pred[None],
        "label": ref[None],
        "foreground": np.array([[52, 52]]),
        "margin_points": np.array([[11, 11], [29, 29]]),
    }
    out = AddCorrectiveClickd("pred")(data)
    np.testing.assert_array_equal(out["foreground"], [[52, 52], [20, 20]])
    assert out["foreground"].dtype == np.int64
    assert "background" not in out or len(out["background"]) == 0
    assert len(data["foreground"]) == 1  # the input is not modified

    # FP case: a background click is appended, an empty background list is created
    pred2 = pred.copy()
    pred2[10:31, 10:31] = 1
    out = AddCorrectiveClickd("pred")({"pred": pred2[None], "label": ref[None], "foreground": [[52, 52]]})
    np.testing.assert_array_equal(out["background"], [[43, 43]])
    assert out["background"].shape == (1, 2)
    np.testing.assert_array_equal(np.asarray(out["foreground"]), [[52, 52]])


def test_dict_transform_treats_margin_points_as_clicked():
    ref = np.zeros((10, 10), dtype=np.uint8)
    ref[4, 4] = 1
    data = {"pred": np.zeros((1, 10, 10)), "label": ref[None], "margin_points": [[4, 4]]}
    out = AddCorrectiveClickd("pred")(data)
    assert "foreground" not in out and "background" not in out


def test_dict_transform_leaves_perfect_prediction_alone():
    pred, ref = _fn_fp_case()
    data = {"pred": ref[None], "label": ref[None], "foreground": np.array([[20, 20]])}
    out = AddCorrectiveClickd("pred")(data)
    np.testing.assert_array_equal(out["foreground"], [[20, 20]])
    assert "background" not in out
