"""Graph cut with hard click constraints (paper Eq. 8-11)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.graph_cut import GraphCutd, graph_cut, neighbour_offsets
from tests.conftest import dice_np, ellipsoid_mask


def _disk_prob(mask, seed=0, noise=0.25):
    """Probability of a disk/ball corrupted by noise, never exactly 0.5."""
    rng = np.random.RandomState(seed)
    p = np.where(mask, 0.75, 0.25) + noise * rng.randn(*mask.shape)
    p = np.clip(p, 0.01, 0.99)
    p[np.abs(p - 0.5) < 1e-3] = 0.51
    return p


@pytest.mark.parametrize("fixture,connectivity", [
    ("disk_2d", 4), ("disk_2d", 8), ("ball_3d", 6), ("ball_3d", 18), ("ball_3d", 26),
])
def test_clicked_voxels_keep_their_label(request, fixture, connectivity):
    image, mask = request.getfixturevalue(fixture)
    prob = np.where(mask, 0.99, 0.01)
    inside = tuple(np.argwhere(mask).mean(0).round().astype(int))
    outside = (2,) * mask.ndim
    assert mask[inside] and not mask[outside]
    out = graph_cut(image[0], prob, foreground=[outside], background=[inside], connectivity=connectivity)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    assert out[outside] == 1, "foreground click where prob = 0.01 was not kept"
    assert out[inside] == 0, "background click where prob = 0.99 was not kept"
    # elsewhere the probability still rules
    assert dice_np(out, mask) > 0.95


@pytest.mark.parametrize("lamda", [0.0, 5.0, 50.0])
def test_clicks_hold_for_any_lamda(disk_2d, lamda):
    image, mask = disk_2d
    prob = np.where(mask, 0.99, 0.01)
    fg = np.array([[1, 1], [62, 62]])
    bg = np.array([[30, 34], [25, 30]])
    out = graph_cut(image[0], prob, fg, bg, lamda=lamda)
    assert np.all(out[tuple(fg.T)] == 1) and np.all(out[tuple(bg.T)] == 0)


@pytest.mark.parametrize("fixture", ["disk_2d", "ball_3d"])
def test_lamda_zero_is_thresholding(request, fixture):
    image, mask = request.getfixturevalue(fixture)
    prob = _disk_prob(mask, seed=1)
    out = graph_cut(image[0], prob, lamda=0.0)
    np.testing.assert_array_equal(out, (prob > 0.5).astype(np.uint8))


@pytest.mark.parametrize("fixture", ["disk_2d", "ball_3d"])
def test_pairwise_term_removes_noise(request, fixture):
    image, mask = request.getfixturevalue(fixture)
    prob = _disk_prob(mask, seed=2)
    thresholded = prob > 0.5
    out = graph_cut(image[0], prob)  # paper defaults: lamda 5, sigma 0.1
    d_thr, d_gc = dice_np(thresholded, mask), dice_np(out, mask)
    assert d_thr < 0.95  # the noise is real
    assert d_gc > d_thr + 0.03
    assert d_gc > 0.97
    # isolated false positives far from the object are gone
    far = ~ellipsoid_mask(mask.shape, np.argwhere(mask).mean(0), 20)
    assert thresholded[far].sum() > 100 and out[far].sum() < thresholded[far].sum() / 50


def test_spacing_changes_the_weights():
    # a 20x20 plane of prob 0.8 between planes of prob 0.3, constant image: with 1 mm slices the
    # 800 through-plane edges (weight lamda = 5 each) cost more than keeping the plane (400 * log 4),
    # with 10 mm slices (weight 0.5 each) they cost less, so the plane survives
    prob = np.full((20, 20, 5), 0.3)
    prob[:, :, 2] = 0.8
    image = np.zeros(prob.shape)
    iso = graph_cut(image, prob)
    aniso = graph_cut(image, prob, spacing=(1.0, 1.0, 10.0))
    assert iso.sum() == 0
    assert np.all(aniso[:, :, 2] == 1) and aniso.sum() == 400


def test_spacing_changes_the_weights_2d():
    prob = np.full((5, 30), 0.3)
    prob[2] = 0.9  # one row of higher probability
    image = np.zeros(prob.shape)
    assert graph_cut(image, prob).sum() == 0
    out = graph_cut(image, prob, spacing=(20.0, 1.0))
    np.testing.assert_array_equal(out[2], 1)
    assert out.sum() == 30


def test_image_edges_guide_the_cut():
    # the probability is uncertain (0.55 / 0.45) on a band around the true edge of the image:
    # the contrast-sensitive pairwise term puts the boundary on the image edge
    image = np.zeros((40, 40))
    image[:, 20:] = 1.0
    prob = np.full(image.shape, 0.1)
    prob[:, 25:] = 0.9
    prob[:, 15:25] = 0.45
    prob[:, 15:20] = 0.55  # thresholding would put the edge at column 15
    out = graph_cut(image, prob, lamda=5.0)
    np.testing.assert_array_equal(out[:, 20:], 1)
    np.testing.assert_array_equal(out[:, :20], 0)
    assert (prob > 0.5)[:, 15:20].all()  # thresholding disagrees


def test_neighbour_offsets():
    assert len(neighbour_offsets(2, 4)) == 2 and len(neighbour_offsets(2, 8)) == 4
    assert [len(neighbour_offsets(3, c)) for c in (6, 18, 26)] == [3, 9, 13]
    offs = neighbour_offsets(3, 26)
    # one of each +/- pair: no offset is the negative of another
    assert not any(tuple(-o for o in a) in offs for a in offs)


@pytest.mark.parametrize("ndim,connectivity", [(2, 6), (2, 26), (3, 4), (3, 8), (3, 10)])
def test_invalid_connectivity_raises(ndim, connectivity):
    shape = (8,) * ndim
    image = np.random.RandomState(0).rand(*shape)
    with pytest.raises(ValueError, match="connectivity"):
        graph_cut(image, np.full(shape, 0.3), connectivity=connectivity)
    with pytest.raises(ValueError, match="connectivity"):
        graph_cut(image, np.full(shape, 0.3), lamda=0.0, connectivity=connectivity)


def test_graph_cut_dict_uses_per_request_lamda_and_sigma(disk_2d):
    image, mask = disk_2d
    prob = _disk_prob(mask, seed=3)
    base = {"image": image, "pred": np.stack([1 - prob, prob]), "foreground": [[30, 34]], "background": [[2, 2]]}
    default = GraphCutd("pred")(base)["pred"]
    assert default.shape == (1, 64, 64) and default.dtype == np.uint8
    np.testing.assert_array_equal(default[0], graph_cut(image[0], prob, [[30, 34]], [[2, 2]]))
    # lamda = 0 in the request: plain thresholding (plus the clicks)
    thr = GraphCutd("pred")({**base, "lamda": 0.0})["pred"][0]
    expected = (prob > 0.5).astype(np.uint8)
    expected[30, 34], expected[2, 2] = 1, 0
    np.testing.assert_array_equal(thr, expected)
    assert not np.array_equal(thr, default[0])
    # sigma from the request
    sig = GraphCutd("pred")({**base, "sigma": 0.5, "lamda": 2.0})["pred"][0]
    np.testing.assert_array_equal(sig, graph_cut(image[0], prob, [[30, 34]], [[2, 2]], lamda=2.0, sigma=0.5))
    # constructor defaults are used when the request has none
    ctor = GraphCutd("pred", lamda=0.0)(base)["pred"][0]
    np.testing.assert_array_equal(ctor, expected)


def test_graph_cut_dict_3d_with_spacing():
    prob = np.full((20, 20, 5), 0.3)
    prob[:, :, 2] = 0.8
    data = {"image": np.zeros((1, 20, 20, 5)), "pred": prob[None], "spacing": (1.0, 1.0, 10.0)}
    assert GraphCutd("pred", min_kept=0)(data)["pred"][0, :, :, 2].all()
    data["spacing"] = (1.0, 1.0, 1.0)
    assert GraphCutd("pred", min_kept=0)(data)["pred"].sum() == 0


def test_graph_cut_dict_margin_points_are_hard_foreground(disk_2d):
    image, mask = disk_2d
    prob = np.where(mask, 0.99, 0.01)
    data = {"image": image, "pred": prob[None], "margin_points": [[2, 2]], "foreground": [[61, 61]],
            "background": [[30, 34]]}
    out = GraphCutd("pred")(data)["pred"][0]
    assert out[2, 2] == 1 and out[61, 61] == 1 and out[30, 34] == 0
    np.testing.assert_array_equal(out, graph_cut(image[0], prob, [[2, 2], [61, 61]], [[30, 34]]))


def _soft_ball(shape=(30, 30, 30), radius=8, inside=0.6):
    grid = np.indices(shape) - (np.array(shape) // 2)[:, None, None, None]
    ball = (grid**2).sum(0) <= radius**2
    image = 0.5 + 0.001 * np.random.RandomState(0).randn(*shape)  # no edge to follow
    return image, np.where(ball, inside, 1 - inside), ball


def test_guard_lowers_lamda_only_when_the_cut_would_erase_the_object():
    image, prob, ball = _soft_ball()
    fg, bg = np.array([[15, 15, 15]]), np.array([[15, 15, 10]])
    plain = graph_cut(image, prob, fg, bg)
    assert plain.sum() < 0.1 * ball.sum(), "premise: lamda 5 on a soft, edgeless probability erases the object"
    guarded = graph_cut(image, prob, fg, bg, min_kept=0.25)
    assert guarded.sum() >= 0.25 * ball.sum()
    assert guarded[15, 15, 15] == 1 and guarded[15, 15, 10] == 0, "hard clicks still hold"
    # a confident probability does not collapse: the guard returns the plain cut unchanged
    confident = np.where(ball, 0.95, 0.05)
    np.testing.assert_array_equal(graph_cut(image, confident, fg, bg, min_kept=0.25), graph_cut(image, confident, fg, bg))


@pytest.mark.parametrize("shape", [(40, 50), (20, 24, 18)])
def test_band_graph_cut_is_the_graph_cut_restricted_to_the_band(shape):
    """With the band everywhere it is graph_cut; with the optimum fixed outside a random band
    it gives that optimum back (the restriction of a minimum cut is a minimum cut)."""
    from lib.transforms.graph_cut import band_graph_cut

    rng = np.random.default_rng(0)
    img = rng.random(shape)
    prob = np.clip(rng.random(shape) * 0.6 + (img > 0.5) * 0.3, 0, 1)
    fg = np.array([[3] * len(shape)])
    full = graph_cut(img, prob, foreground=fg) > 0
    everywhere = band_graph_cut(img, prob, np.zeros(shape, bool), np.ones(shape, bool), foreground=fg)
    np.testing.assert_array_equal(everywhere, full)
    band = rng.random(shape) < 0.5
    np.testing.assert_array_equal(band_graph_cut(img, prob, full, band, foreground=fg), full)
    wrong = ~full  # fixed labels act on the band through the pairwise term
    assert not np.array_equal(band_graph_cut(img, prob, wrong, band, foreground=fg), full)
