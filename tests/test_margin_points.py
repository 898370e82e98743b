"""Simulated and deterministic interior margin points (paper section 2.1)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.crop import relaxed_box
from lib.transforms.margin_points import (
    SimulateMarginPointsd,
    boundary_voxels,
    extreme_margin_points,
    move_inwards,
    simulate_margin_points,
)

SEEDS = range(12)


def _box_covers(points, mask, spacing=None) -> bool:
    """Relaxed box (crop defaults) of the points contains every object voxel."""
    box = relaxed_box(points, mask.shape, spacing)
    idx = np.argwhere(mask)
    return bool(np.all(idx >= box[0]) and np.all(idx < box[1]))


def _check_points(points, mask, spacing=None):
    assert points.dtype == np.int64 and points.shape[1] == mask.ndim
    assert np.all(mask[tuple(points.T)]), "a margin point lies outside the object"
    assert len(np.unique(points, axis=0)) == len(points), "duplicated margin points"
    assert _box_covers(points, mask, spacing), "relaxed box of the margin points cuts the object"


@pytest.mark.parametrize("fixture", ["disk_2d", "border_disk_2d", "thin_bar_2d", "ball_3d"])
def test_simulated_points_inside_and_covering(request, fixture):
    """3-4 (2D) / 5-6 (3D) extreme points plus 0-5 random ones, inside, box covering."""
    mask = request.getfixturevalue(fixture)[1]
    n_extreme = (3, 4) if mask.ndim == 2 else (5, 6)
    counts = set()
    for seed in SEEDS:
        pts = simulate_margin_points(mask, np.random.RandomState(seed))
        _check_points(pts, mask)
        assert n_extreme[0] <= len(pts) <= n_extreme[1] + 5
        counts.add(len(pts))
    assert len(counts) > 1, "the number of random extra points never varied"


def test_simulated_points_anisotropic_3d(aniso_ball_3d):
    _, mask, spacing = aniso_ball_3d
    for seed in SEEDS:
        pts = simulate_margin_points(mask, np.random.RandomState(seed), spacing)
        _check_points(pts, mask, spacing)
        assert 5 <= len(pts) <= 11


@pytest.mark.parametrize("fixture,ndim", [("disk_2d", 2), ("border_disk_2d", 2), ("thin_bar_2d", 2), ("ball_3d", 3)])
def test_extreme_point_count_without_random_points(request, fixture, ndim):
    mask = request.getfixturevalue(fixture)[1]
    allowed = {2 * ndim - 1, 2 * ndim}
    for seed in SEEDS:
        pts = simulate_margin_points(mask, np.random.RandomState(seed), max_random=0)
        assert len(pts) in allowed, f"{len(pts)} extreme points in {ndim}D"
        _check_points(pts, mask)


def test_one_extreme_point_is_sometimes_dropped():
    # a square: the extreme groups are whole sides, so 3 points often still give a covering box
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 10:50] = True
    counts = {len(simulate_margin_points(mask, np.random.RandomState(s), max_random=0)) for s in range(40)}
    assert counts == {3, 4}


def test_points_are_moved_off_the_boundary_of_a_large_object(disk_2d):
    mask = disk_2d[1]
    boundary = {tuple(p) for p in boundary_voxels(mask)}
    pts = simulate_margin_points(mask, np.random.RandomState(0), depth_range=(0.1, 0.1), max_random=0)
    assert not any(tuple(p) in boundary for p in pts)


def test_simulation_is_reproducible_and_seed_dependent(disk_2d):
    mask = disk_2d[1]
    a = simulate_margin_points(mask, np.random.RandomState(7))
    b = simulate_margin_points(mask, np.random.RandomState(7))
    np.testing.assert_array_equal(a, b)
    draws = [simulate_margin_points(mask, np.random.RandomState(s)) for s in range(5)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])


def test_dict_transform_with_random_state(ball_3d):
    _, mask = ball_3d
    data = {"label": mask[None].astype(np.uint8)}

    def draw(seed):
        t = SimulateMarginPointsd("label")
        t.set_random_state(seed=seed)
        return t(data)["margin_points"]

    a, b = draw(3), draw(3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(draw(3), draw(4))
    _check_points(a, mask)
    # a new draw on every call of the same transform
    t = SimulateMarginPointsd("label")
    t.set_random_state(seed=3)
    first, second = t(data)["margin_points"], t(data)["margin_points"]
    np.testing.assert_array_equal(first, a)
    assert not np.array_equal(first, second)


def test_dict_transform_uses_spacing_from_data(aniso_ball_3d):
    _, mask, spacing = aniso_ball_3d
    t = SimulateMarginPointsd("label", max_random=0)
    for seed in SEEDS:
        t.set_random_state(seed=seed)
        pts = t({"label": mask[None], "spacing": spacing})["margin_points"]
        _check_points(pts, mask, spacing)


def test_extreme_points_deterministic(request):
    for fixture, n in [("disk_2d", 4), ("border_disk_2d", 4), ("thin_bar_2d", 4), ("ball_3d", 6)]:
        mask = request.getfixturevalue(fixture)[1]
        pts = extreme_margin_points(mask)
        assert len(pts) == n, fixture
        _check_points(pts, mask)
        np.testing.assert_array_equal(pts, extreme_margin_points(mask))


def test_extreme_points_of_a_disk_are_near_its_extremes(disk_2d):
    mask = disk_2d[1]  # radius 15 at (30, 34)
    pts = extreme_margin_points(mask)
    expected = np.array([[15, 34], [45, 34], [30, 19], [30, 49]])
    for e in expected:
        d = np.min(np.abs(pts - e).sum(1))
        assert d <= 2, f"no margin point near the extreme {e.tolist()}: {pts.tolist()}"


def test_extreme_points_anisotropic(aniso_ball_3d):
    _, mask, spacing = aniso_ball_3d
    pts = extreme_margin_points(mask, spacing)
    assert len(pts) == 6
    _check_points(pts, mask, spacing)


def test_move_inwards_respects_depth_and_its_cap():
    big = np.zeros((40, 40), dtype=bool)
    big[5:35, 5:35] = True
    moved = move_inwards(big, np.array([[5, 20]]), depth=4.0)
    np.testing.assert_array_equal(moved, [[8, 20]])  # first row with distance >= 4 to the background
    # a 9-voxel-thick bar (rows 20..28, largest distance 5): a depth of 10 is capped at 2.5,
    # so the click goes to the nearest row at distance >= 2.5 (row 22), not to the middle
    bar = np.zeros((40, 60), dtype=bool)
    bar[20:29, 5:55] = True
    moved = move_inwards(bar, np.array([[20, 30], [28, 40]]), depth=10.0)
    np.testing.assert_array_equal(moved, [[22, 30], [26, 40]])


def test_move_inwards_keeps_clicks_inside_a_thin_object(thin_bar_2d):
    mask = thin_bar_2d[1]  # rows 20..22
    moved = move_inwards(mask, np.array([[20, 30], [22, 40], [21, 5]]), depth=10.0)
    assert np.all(mask[tuple(moved.T)])
    assert np.all(np.abs(moved - [[20, 30], [22, 40], [21, 5]]).sum(1) <= 1)


@pytest.mark.parametrize("fixture", ["disk_2d", "ball_3d"])
def test_deep_moves_are_reduced_until_the_box_covers(request, fixture):
    # moving 20-30 % of the extent inwards would leave the object outside the box: the
    # depths must be reduced until it covers again, yet the points still move off the boundary
    mask = request.getfixturevalue(fixture)[1]
    boundary = {tuple(p) for p in boundary_voxels(mask)}
    for seed in range(5):
        pts = simulate_margin_points(mask, np.random.RandomState(seed), depth_range=(0.2, 0.3))
        _check_points(pts, mask)
        assert sum(tuple(p) not in boundary for p in pts) >= len(pts) // 2
    _check_points(extreme_margin_points(mask, depth_fraction=0.3), mask)
