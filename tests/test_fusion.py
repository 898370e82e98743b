"""Information fusion of the CNN probability with the clicks (paper Eq. 3-7)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
import pytest

from lib.transforms.fusion import (
    SPATIAL_WEIGHT, InformationFusiond, click_distance, click_distances, fuse_probability, temper_probability,
)
from lib.transforms.egd import geodesic_distance

P = [0.2, 0.7, 0.5, 0.9]
DF = [0.0, 2.0, 0.5, 4.0]
DB = [3.0, 0.5, 0.5, 0.0]


def _expected(p, df, db):
    """Eq. 3-7 written out with explicit exponentials."""
    out = []
    for pi, f, b in zip(p, df, db):
        e_f = math.exp(-f) / (math.exp(-f) + math.exp(-b))  # Eq. 3
        e_b = math.exp(-b) / (math.exp(-f) + math.exp(-b))  # Eq. 4
        assert abs(e_f + e_b - 1.0) < 1e-12
        alpha = math.exp(-min(f, b))  # Eq. 7
        r_f = (1 - alpha) * pi + alpha * e_f  # Eq. 5
        out.append(r_f)
    return np.array(out)


def test_fusion_matches_the_equations_on_a_hand_case():
    r = fuse_probability(np.array(P), np.array(DF), np.array(DB))
    assert r.dtype == np.float32 and r.shape == (4,)
    # voxel 0 is a foreground click: alpha = 1, R = E^f = 1 / (1 + e^-3)
    assert r[0] == pytest.approx(1.0 / (1.0 + math.exp(-3.0)), abs=1e-6)
    # voxel 2: equal distances -> E^f = 1/2, alpha = e^-0.5
    assert r[2] == pytest.approx((1 - math.exp(-0.5)) * 0.5 + math.exp(-0.5) * 0.5, abs=1e-6)
    np.testing.assert_allclose(r, _expected(P, DF, DB), rtol=0, atol=1e-6)
    # Eq. 6: R^b = (1 - alpha) P^b + alpha E^b = 1 - R^f
    alpha = np.exp(-np.minimum(DF, DB))
    e_b = np.exp(-np.array(DB)) / (np.exp(-np.array(DF)) + np.exp(-np.array(DB)))
    r_b = (1 - alpha) * (1 - np.array(P)) + alpha * e_b
    np.testing.assert_allclose(1.0 - r, r_b, atol=1e-6)


def test_fusion_keeps_the_shape_of_2d_maps():
    p = np.array(P).reshape(2, 2)
    r = fuse_probability(p, np.array(DF).reshape(2, 2), np.array(DB).reshape(2, 2))
    np.testing.assert_allclose(r.ravel(), _expected(P, DF, DB), atol=1e-6)


def test_absent_background_clicks():
    r = fuse_probability(np.array(P), np.array(DF), None)
    alpha = np.exp(-np.array(DF))
    np.testing.assert_allclose(r, (1 - alpha) * np.array(P) + alpha * 1.0, atol=1e-6)  # E^f = 1
    assert r[0] == pytest.approx(1.0)


def test_absent_foreground_clicks():
    r = fuse_probability(np.array(P), None, np.array(DB))
    alpha = np.exp(-np.array(DB))
    np.testing.assert_allclose(r, (1 - alpha) * np.array(P), atol=1e-6)  # E^f = 0
    assert r[3] == pytest.approx(0.0)


def test_no_clicks_returns_the_probability():
    p = np.array(P)
    np.testing.assert_allclose(fuse_probability(p, None, None), p, atol=1e-7)


def test_finite_absent_distance():
    r = fuse_probability(np.array(P), np.array(DF), None, absent_distance=2.0)
    np.testing.assert_allclose(r, _expected(P, DF, [2.0] * 4), atol=1e-6)


def test_no_nan_far_from_the_clicks():
    p = np.array([0.1, 0.6, 0.95])
    far = np.full(3, 1000.0)
    for df, db in [(far, far), (far, None), (None, far), (np.full(3, np.inf), np.full(3, np.inf))]:
        r = fuse_probability(p, df, db)
        assert np.all(np.isfinite(r))
        np.testing.assert_allclose(r, p, atol=1e-6)  # alpha = 0: the CNN decides
    # far from one kind, near the other: the near kind wins without overflow
    r = fuse_probability(p, np.zeros(3), np.full(3, 1000.0))
    np.testing.assert_allclose(r, 1.0, atol=1e-6)
    r = fuse_probability(p, np.full(3, 1000.0), np.zeros(3))
    np.testing.assert_allclose(r, 0.0, atol=1e-6)


def test_result_is_a_probability_on_random_input():
    rng = np.random.RandomState(0)
    p = rng.rand(200)
    r = fuse_probability(p, rng.exponential(2.0, 200), rng.exponential(2.0, 200))
    assert np.all((r >= 0) & (r <= 1))


def test_click_distances(disk_2d):
    image = disk_2d[0][0]
    fg, bg = np.array([[30, 34]]), np.array([[2, 2], [60, 60]])
    d_fg, d_bg = click_distances(image, fg, bg)
    # geodesic distance of the EGD plus SPATIAL_WEIGHT x Euclidean distance / longest side
    # (each click its own seed set: the nearest click by that combined distance)
    for d, pts in ((d_fg, fg), (d_bg, bg)):
        per_click = []
        for p in pts:
            seeds = np.ones(image.shape, bool)
            seeds[tuple(p)] = False
            euclid = ndimage.distance_transform_edt(seeds) / max(image.shape)
            per_click.append(geodesic_distance(image, p[None]) + SPATIAL_WEIGHT * euclid)
        np.testing.assert_allclose(d, np.minimum.reduce(per_click), rtol=1e-5, atol=1e-5)
    assert d_fg[30, 34] == 0 and d_bg[2, 2] == 0 and d_bg[60, 60] == 0
    assert click_distances(image, fg, np.zeros((0, 2)))[1] is None
    assert click_distances(image, [], bg)[0] is None


def test_click_distances_take_each_click_on_its_own_and_margin_points_together(disk_2d):
    """A refinement click's map never changes when later clicks come (what the server
    caches): the set's distance is the minimum of one map per click, plus one map of all
    margin points; anisotropic spacing enters the Euclidean term."""
    image, spacing = disk_2d[0][0], (2.0, 1.0)
    margin, fg, bg = np.array([[17, 34], [43, 34]]), np.array([[30, 34], [30, 20]]), np.array([[2, 2], [60, 60]])
    d_fg, d_bg = click_distances(image, fg, bg, spacing, margin)
    expected_fg = np.minimum.reduce([click_distance(image, margin, spacing)] + [click_distance(image, p[None], spacing) for p in fg])
    np.testing.assert_array_equal(d_fg, expected_fg)
    np.testing.assert_array_equal(d_bg, np.minimum(click_distance(image, bg[:1], spacing), click_distance(image, bg[1:], spacing)))
    # on a flat image only the spatial term is left: 3 rows of 2 mm from the click, longest side 128 mm
    flat = click_distance(np.zeros((64, 64)), [[10, 10]], spacing)
    assert flat[13, 10] == pytest.approx(SPATIAL_WEIGHT * 6.0 / 128.0, abs=1e-4)


@pytest.mark.parametrize("channels", [1, 2])
def test_information_fusion_transform(disk_2d, channels):
    image, mask = disk_2d
    p_fg = np.where(mask, 0.7, 0.3).astype(np.float32)
    p_fg[30:34, 20:30] = 0.2  # a CNN mistake inside the object
    prob = p_fg[None] if channels == 1 else np.stack([1 - p_fg, p_fg])
    fg, bg = np.array([[31, 25]]), np.array([[3, 3]])
    out = InformationFusiond("pred")({"image": image, "pred": prob, "foreground": fg, "background": bg})
    r = out["pred"]
    assert r.shape == (1, 64, 64) and r.dtype == np.float32
    d_fg, d_bg = click_distances(image[0], fg, bg)
    np.testing.assert_allclose(r[0], fuse_probability(p_fg, d_fg, d_bg), atol=1e-6)
    assert r[0, 31, 25] > 0.5 > p_fg[31, 25]  # the click corrects the mistake


def test_information_fusion_transform_without_background(ball_3d):
    image, mask = ball_3d
    p_fg = np.where(mask, 0.8, 0.1).astype(np.float32)
    out = InformationFusiond("pred")({"image": image, "pred": p_fg[None], "foreground": [[20, 18, 15]]})
    d_fg, _ = click_distances(image[0], [[20, 18, 15]], None)
    np.testing.assert_allclose(out["pred"][0], fuse_probability(p_fg, d_fg, None), atol=1e-6)
    assert out["pred"][0, 20, 18, 15] == pytest.approx(1.0)


def test_information_fusion_transform_counts_margin_points_as_foreground(disk_2d):
    image, mask = disk_2d
    p_fg = np.where(mask, 0.7, 0.3).astype(np.float32)
    margin = np.array([[17, 34], [43, 34], [30, 21], [30, 47]])
    bg = np.array([[3, 3]])
    data = {"image": image, "pred": p_fg[None], "margin_points": margin, "background": bg}
    out = InformationFusiond("pred")(data)["pred"][0]
    d_fg, d_bg = click_distances(image[0], [], bg, margin=margin)
    np.testing.assert_allclose(out, fuse_probability(p_fg, d_fg, d_bg), atol=1e-6)
    assert np.all(out[tuple(margin.T)] > 0.5)


def test_information_fusion_transform_passes_stage1_through(disk_2d):
    # only margin points, no refinement click: the CNN probability is kept as it is
    image, mask = disk_2d
    p_fg = np.where(mask, 0.7, 0.3).astype(np.float32)
    out = InformationFusiond("pred")({"image": image, "pred": np.stack([1 - p_fg, p_fg]), "margin_points": [[30, 34]]})
    assert out["pred"].shape == (1, 64, 64)
    np.testing.assert_allclose(out["pred"][0], p_fg)


def test_temperature_one_is_the_identity_and_higher_pulls_towards_one_half():
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.8, 0.999, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(temper_probability(p, 1.0), p)
    tempered = temper_probability(p, 4.0)
    np.testing.assert_allclose(tempered[3], 0.5, atol=1e-6)
    assert np.all(np.abs(tempered - 0.5) <= np.abs(p - 0.5) + 1e-6)  # never more confident
    assert np.all(np.diff(tempered) >= 0)  # the order of the voxels is kept
    assert 0.8 < tempered[-1] < 0.99  # a saturated 1 is no longer certain
    # the logit is divided by the temperature
    logit = np.log(0.8 / 0.2)
    np.testing.assert_allclose(tempered[4], 1 / (1 + np.exp(-logit / 4)), rtol=1e-5)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        temper_probability(np.ones(3), 0.0)


def test_click_distance_is_its_geodesic_plus_its_weighted_spatial_part(disk_2d):
    """The infer task caches the two parts apart and sums them: the sum must be the same map."""
    from lib.transforms.fusion import spatial_distance

    image = disk_2d[0][0]
    points, spacing = np.array([[20, 30], [40, 41]]), (0.8, 1.3)
    geodesic = click_distance(image, points, spacing, 0.0, smoothing=1.0)
    summed = np.asarray(geodesic + 2.5 * spatial_distance(image.shape, points, spacing), dtype=np.float32)
    np.testing.assert_array_equal(summed, click_distance(image, points, spacing, 2.5, smoothing=1.0))
    assert not np.array_equal(summed, geodesic)
