"""Exponentialized geodesic distance (paper Eq. 1-2)."""

from __future__ import annotations

import GeodisTK
import numpy as np
import pytest

from lib.transforms.egd import (
    GEODESIC_ITERATIONS,
    exponentialized_geodesic_distance,
    geodesic_distance,
    geodesic_intensity,
)


def _step_image(shape, seed=0):
    """0 on the first half of axis 1, 1 on the second half, small noise."""
    rng = np.random.RandomState(seed)
    img = np.zeros(shape, dtype=np.float32)
    img[:, shape[1] // 2 :] = 1.0
    return img + 0.01 * rng.randn(*shape).astype(np.float32)


def _check_range_and_seeds(egd, points):
    assert egd.dtype == np.float32
    assert np.all(egd >= 0.0) and np.all(egd <= 1.0)
    assert np.all(egd[tuple(np.asarray(points).T)] == 1.0)


def test_egd_2d_is_one_at_seeds_and_in_unit_range(disk_2d):
    image = disk_2d[0][0]
    pts = np.array([[30, 34], [10, 10], [63, 0]])
    egd = exponentialized_geodesic_distance(image, pts)
    assert egd.shape == image.shape
    _check_range_and_seeds(egd, pts)
    assert egd.min() < 0.1, "the EGD must drop away from the seeds on a noisy image"


def test_egd_3d_is_one_at_seeds_and_in_unit_range(ball_3d):
    image = ball_3d[0][0]
    pts = np.array([[20, 18, 15], [0, 0, 31]])
    egd = exponentialized_geodesic_distance(image, pts)
    assert egd.shape == image.shape
    _check_range_and_seeds(egd, pts)
    assert egd.min() < 0.1


def test_egd_2d_is_low_across_an_edge():
    img = _step_image((64, 64))  # edge between columns 31 and 32
    seed = (32, 20)
    egd = exponentialized_geodesic_distance(img, [seed])
    across = egd[32, 40]  # 20 px away, on the other side of the edge
    flat = egd[52, 20]  # 20 px away, same flat region
    assert flat > 0.5
    assert across < 0.1
    # and it stays low anywhere beyond the edge, high anywhere before it
    assert egd[:, 33:].max() < 0.1 < 0.5 < egd[:, :30].min()


def test_egd_3d_is_low_across_an_edge():
    img = _step_image((32, 32, 20))
    egd = exponentialized_geodesic_distance(img, [[16, 8, 10]])
    assert egd[16, 8 + 12, 10] < 0.1  # across the edge
    assert egd[16 - 12, 8, 10] > 0.5  # same distance, flat region
    assert egd[:, 17:].max() < egd[:, :15].min()


def test_geodesic_distance_follows_the_path_integral():
    # a 1-row image 0,0,1,1,3: the distance is the summed absolute intensity change (z-scored x2)
    img = np.array([[0.0, 0.0, 1.0, 1.0, 3.0]] * 3, dtype=np.float32)
    d = geodesic_distance(img, [[1, 0]])
    scale = 2.0 / img.std()
    np.testing.assert_allclose(d[1], [0.0, 0.0, 1.0 * scale, 1.0 * scale, 3.0 * scale], rtol=1e-4, atol=1e-5)
    egd = exponentialized_geodesic_distance(img, [[1, 0]])
    np.testing.assert_allclose(egd, np.exp(-d), rtol=1e-5)


def test_egd_does_not_depend_on_the_intensity_unit():
    img = _step_image((32, 32))
    a = exponentialized_geodesic_distance(img, [[5, 5]])
    b = exponentialized_geodesic_distance(100.0 * img - 7.0, [[5, 5]])
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)])
def test_egd_without_points_is_zero(shape):
    img = np.random.RandomState(0).rand(*shape)
    for pts in ([], np.zeros((0, len(shape)), dtype=np.int64)):
        egd = exponentialized_geodesic_distance(img, pts)
        assert egd.shape == shape and egd.dtype == np.float32 and not egd.any()


def test_egd_on_a_constant_image_is_one():
    egd = exponentialized_geodesic_distance(np.full((10, 12), 5.0), [[0, 0]])
    np.testing.assert_allclose(egd, 1.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(160, 160), (37, 91), (91, 37)])
def test_2d_geodesic_equals_geodesic_tk_2d_scan(shape):
    """The 2D distance runs GeodisTK's 3D scan on a one-voxel-thick volume (faster); it must
    equal the library's own 2D scan."""
    rng = np.random.RandomState(sum(shape))
    image = (rng.rand(*shape) * 3).astype(np.float32)
    points = np.array([[shape[0] // 3, shape[1] // 2], [shape[0] - 1, 0]])
    seeds = np.zeros(shape, np.uint8)
    seeds[tuple(points.T)] = 1
    expected = GeodisTK.geodesic2d_raster_scan(geodesic_intensity(image), seeds, 1.0, GEODESIC_ITERATIONS)
    np.testing.assert_array_equal(geodesic_distance(image, points), expected)
