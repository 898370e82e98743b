"""Bad input raises ``ValueError`` naming the problem, in the checks and in the steps that use them."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.crop import CropByMarginPointsd
from lib.transforms.egd import exponentialized_geodesic_distance, geodesic_distance
from lib.transforms.fusion import click_distances, fuse_probability
from lib.transforms.graph_cut import graph_cut
from lib.transforms.margin_points import SimulateMarginPointsd, extreme_margin_points, simulate_margin_points
from lib.transforms.validation import as_points, check_image, points_to_mask, validate_points


# --- as_points / validate_points -------------------------------------------------------------


def test_validate_points_accepts_good_points_and_returns_int64():
    pts = validate_points([[1, 2], [3.0, 4.0]], (10, 10))
    assert pts.dtype == np.int64
    np.testing.assert_array_equal(pts, [[1, 2], [3, 4]])


def test_single_point_as_flat_sequence_becomes_one_row():
    np.testing.assert_array_equal(as_points([4, 5, 6], 3), [[4, 5, 6]])


def test_none_and_empty_points_give_empty_array():
    assert as_points(None, 2).shape == (0, 2)
    assert validate_points([], (5, 5)).shape == (0, 2)


@pytest.mark.parametrize("point", [[-1, 3], [3, 10], [10, 0], [0, -5]])
def test_point_outside_image(point):
    with pytest.raises(ValueError, match="outside the image"):
        validate_points([[1, 1], point], (10, 10))


def test_point_outside_image_3d_names_the_point():
    with pytest.raises(ValueError, match=r"\[\[2, 2, 8\]\].*outside"):
        validate_points([[2, 2, 8]], (10, 10, 8))


def test_too_few_points():
    with pytest.raises(ValueError, match="at least 2 points"):
        validate_points([[1, 1]], (10, 10), min_count=2)


def test_duplicated_points():
    with pytest.raises(ValueError, match="more than once"):
        validate_points([[1, 1], [2, 2], [1, 1]], (10, 10))
    # explicitly allowed
    assert len(validate_points([[1, 1], [1, 1]], (10, 10), allow_duplicates=True)) == 2


@pytest.mark.parametrize("points", [[[1, 2, 3]], [[1]], [[1, 2], [3]], [[[1, 2]]]])
def test_wrong_number_of_coordinates(points):
    with pytest.raises(ValueError, match="coordinates"):
        validate_points(points, (10, 10))


@pytest.mark.parametrize("points", [[["a", "b"]], [[1, None]], [[1, {}]]])
def test_non_numeric_coordinates(points):
    with pytest.raises(ValueError, match="must be (finite )?numbers"):
        validate_points(points, (10, 10))


@pytest.mark.parametrize("points", [[[1.5, 2]], [[np.nan, 2]], [[np.inf, 1]]])
def test_non_integral_or_non_finite_coordinates(points):
    with pytest.raises(ValueError, match="integer|finite"):
        validate_points(points, (10, 10))


def test_points_to_mask_marks_exactly_the_points():
    m = points_to_mask(np.array([[0, 1], [3, 2]]), (4, 5))
    assert m.sum() == 2 and m[0, 1] == 1 and m[3, 2] == 1


# --- check_image ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10,), (10, 10), (1, 2, 3, 4, 5)])
def test_check_image_wrong_dimensionality(shape):
    with pytest.raises(ValueError, match="channel-first"):
        check_image(np.random.rand(*shape))


@pytest.mark.parametrize("shape", [(1, 0, 10), (0, 5, 5), (1, 4, 0, 4)])
def test_check_image_empty(shape):
    with pytest.raises(ValueError, match="empty"):
        check_image(np.zeros(shape))


def test_check_image_constant():
    with pytest.raises(ValueError, match="constant"):
        check_image(np.full((1, 8, 8), 3.0))
    # the constant check can be turned off
    assert check_image(np.full((1, 8, 8), 3.0), require_contrast=False).shape == (1, 8, 8)


def test_check_image_non_finite_and_non_numeric():
    img = np.random.rand(1, 8, 8)
    img[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_image(img)
    with pytest.raises(ValueError, match="real numbers"):
        check_image(np.full((1, 4, 4), "x"))


def test_check_image_accepts_2d_and_3d():
    assert check_image(np.random.rand(1, 8, 8)).shape == (1, 8, 8)
    assert check_image(np.random.rand(2, 8, 8, 4)).shape == (2, 8, 8, 4)


# --- the steps reject bad input ----------------------------------------------------------------


def _crop_data(points):
    img = np.random.RandomState(0).rand(1, 32, 32).astype(np.float32)
    return {"image": img, "margin_points": points}


def test_crop_needs_two_margin_points():
    with pytest.raises(ValueError, match="at least 2 points"):
        CropByMarginPointsd("image", (16, 16))(_crop_data([[5, 5]]))
    with pytest.raises(ValueError, match="at least 2 points"):
        CropByMarginPointsd("image", (16, 16))(_crop_data(None))


def test_crop_rejects_outside_duplicated_and_malformed_points():
    crop = CropByMarginPointsd("image", (16, 16))
    with pytest.raises(ValueError, match="outside the image"):
        crop(_crop_data([[5, 5], [40, 3]]))
    with pytest.raises(ValueError, match="more than once"):
        crop(_crop_data([[5, 5], [5, 5]]))
    with pytest.raises(ValueError, match="coordinates"):
        crop(_crop_data([[5, 5, 1], [6, 6, 1]]))
    with pytest.raises(ValueError, match="must be numbers"):
        crop(_crop_data([["x", 5], [6, 6]]))


def test_crop_rejects_wrong_spatial_size_and_empty_image():
    with pytest.raises(ValueError, match="spatial_size"):
        CropByMarginPointsd("image", (16, 16, 16))(_crop_data([[5, 5], [9, 9]]))
    with pytest.raises(ValueError, match="empty"):
        CropByMarginPointsd("image", (16, 16))({"image": np.zeros((1, 0, 32)), "margin_points": [[0, 0], [0, 1]]})


def test_crop_rejects_bad_spacing():
    data = _crop_data([[5, 5], [9, 9]])
    data["spacing"] = (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        CropByMarginPointsd("image", (16, 16))(data)


def test_egd_rejects_bad_points_and_dimensionality():
    img = np.random.RandomState(0).rand(16, 16)
    with pytest.raises(ValueError, match="outside the image"):
        exponentialized_geodesic_distance(img, [[16, 0]])
    with pytest.raises(ValueError, match="coordinates"):
        exponentialized_geodesic_distance(img, [[1, 2, 3]])
    with pytest.raises(ValueError, match="2D or 3D"):
        geodesic_distance(np.random.rand(16), [[1]])
    with pytest.raises(ValueError, match="2D or 3D"):
        geodesic_distance(np.random.rand(2, 3, 4, 5), [[1, 1, 1, 1]])


def test_click_distances_reject_points_with_wrong_coordinates():
    img = np.random.RandomState(0).rand(16, 16)
    # 4 numbers must not be read as two 2D points
    with pytest.raises(ValueError, match="coordinates"):
        click_distances(img, [[1, 2, 3, 4]], [])
    with pytest.raises(ValueError, match="outside"):
        click_distances(img, [], [[1, 20]])


def test_fusion_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        fuse_probability(np.zeros((4, 4)), np.zeros((4, 5)), None)


def test_graph_cut_rejects_bad_input():
    img = np.random.RandomState(0).rand(12, 12)
    prob = np.full((12, 12), 0.3)
    with pytest.raises(ValueError, match="outside the image"):
        graph_cut(img, prob, foreground=[[-1, 5]])  # must not wrap around to the last row
    with pytest.raises(ValueError, match="outside the image"):
        graph_cut(img, prob, background=[[3, 12]])
    with pytest.raises(ValueError, match="coordinates"):
        graph_cut(img, prob, foreground=[[1, 2, 3]])
    with pytest.raises(ValueError, match="differ in shape"):
        graph_cut(img, prob[:-1])
    with pytest.raises(ValueError, match="2D or 3D"):
        graph_cut(np.random.rand(12), np.full(12, 0.3))
    with pytest.raises(ValueError, match="lamda"):
        graph_cut(img, prob, lamda=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        graph_cut(img, prob, sigma=0.0)


def test_margin_points_reject_empty_label_and_wrong_dimensionality():
    rng = np.random.RandomState(0)
    with pytest.raises(ValueError, match="label is empty"):
        simulate_margin_points(np.zeros((16, 16)), rng)
    with pytest.raises(ValueError, match="label is empty"):
        extreme_margin_points(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="2D or 3D"):
        simulate_margin_points(np.ones(16), rng)
    with pytest.raises(ValueError, match="2D or 3D"):
        extreme_margin_points(np.ones((2, 2, 2, 2)))
    t = SimulateMarginPointsd("label")
    with pytest.raises(ValueError, match="label is empty"):
        t({"label": np.zeros((1, 16, 16))})
