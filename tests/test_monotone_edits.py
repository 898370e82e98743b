"""Monotone, stateless corrective edits (lib/transforms/monotone_edits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import ndimage

from lib.transforms.monotone_edits import (
    PREVIOUS, boundary_depth, changes_near_clicks, claimed_changes, local_changes, monotone_masks, previous_state,
    signed_depth,
)


def _random_proposer(seed: int, shape=(12, 12)):
    """Proposals that ignore everything sensible: random masks, fixed per state."""

    def propose(states, previous):
        return [np.random.RandomState(hash((seed,) + s) % 2**31).rand(*shape) > 0.5 for s in states]

    return propose


def _random_contest(seed: int):
    """A contest that ignores everything sensible: random masks, fixed per state, often
    outside the bounds it is given (``monotone_masks`` must clip them)."""

    def contest(state, lower, diagonal, upper):
        return np.random.RandomState(hash((seed, "contest") + state) % 2**31).rand(*lower.shape) > 0.5

    return contest


def _assert_monotone(masks) -> None:
    """Every foreground click only adds and every background click only removes, whichever
    path reaches a state."""
    for (i, j), mask in masks.items():
        if i:
            assert np.all(mask >= masks[(i - 1, j)]), f"foreground click {i} removed voxels at {(i, j)}"
        if j:
            assert np.all(mask <= masks[(i, j - 1)]), f"background click {j} added voxels at {(i, j)}"


@pytest.mark.parametrize("previous", PREVIOUS)
@pytest.mark.parametrize("seed", range(5))
def test_any_proposals_give_monotone_clicks_along_every_path(seed, previous):
    rng = np.random.RandomState(seed)
    base = rng.rand(12, 12) > 0.5
    n, m = 4, 3
    masks = monotone_masks(n, m, base, _random_proposer(seed), previous=previous)
    assert set(masks) == {(i, j) for i in range(n + 1) for j in range(m + 1)}
    np.testing.assert_array_equal(masks[(0, 0)], base)
    _assert_monotone(masks)


@pytest.mark.parametrize("with_contest", [False, True])
@pytest.mark.parametrize("previous", PREVIOUS)
def test_cached_states_give_the_same_masks_as_a_cold_request(previous, with_contest):
    base = np.random.RandomState(9).rand(12, 12) > 0.5
    propose = _random_proposer(3)
    contest = _random_contest(3) if with_contest else None
    cold = monotone_masks(3, 3, base, propose, previous=previous, contest=contest)
    calls = []

    def counting(states, previous):
        calls.extend(states)
        return propose(states, previous)

    partial = {s: m for s, m in cold.items() if s[0] < 3}  # a new 3rd foreground click
    warm = monotone_masks(3, 3, base, counting, partial, previous=previous, contest=contest)
    # a new click costs one row of proposals, or with a contest one proposal
    assert sorted(calls) == ([(3, 0)] if with_contest else [(3, j) for j in range(4)])
    for state in cold:
        np.testing.assert_array_equal(warm[state], cold[state])


def test_proposals_refine_the_state_before_both_last_clicks():
    assert previous_state((2, 3)) == (1, 2)
    assert previous_state((2, 0)) == (1, 0)
    assert previous_state((0, 3)) == (0, 2)
    seen = {}

    def propose(states, previous):
        seen.update({s: p.copy() for s, p in zip(states, previous)})
        return [p for p in previous]

    base = np.zeros((4, 4), bool)
    base[1:3, 1:3] = True
    monotone_masks(2, 2, base, propose)
    np.testing.assert_array_equal(seen[(1, 1)], base)


def _region_proposer():
    """A refinement that answers each click with its own region: foreground click 1 adds the
    left strip, background click 1 removes the right strip; with both clicks it answers the
    foreground one only (its claim vetoes the removal, as a nearer seed does), and elsewhere
    it keeps the mask it refines."""

    def propose(states, previous):
        out = []
        for (i, j), prev in zip(states, previous):
            mask = prev.copy()
            if i:
                mask[:, 0:2] = True
            elif j:
                mask[:, 6:8] = False
            out.append(mask)
        return out

    return propose


def _strip_base() -> np.ndarray:
    base = np.zeros((8, 8), bool)
    base[:, 2:8] = True
    return base


def test_merged_previous_keeps_both_last_clicks_decisions():
    # With "diagonal", R(1, 1) refines M(0, 0), which holds neither click, so the foreground
    # click gives back the strip the background click took away; "merged" refines a mask
    # holding both decisions, which stand where the proposal does not overrule them.
    base = _strip_base()
    masks = {p: monotone_masks(1, 1, base, _region_proposer(), previous=p) for p in PREVIOUS}
    expected = base.copy()
    expected[:, 0:2] = True
    expected[:, 6:8] = False
    np.testing.assert_array_equal(masks["merged"][(1, 1)], expected)
    assert masks["diagonal"][(1, 1)][:, 6:8].all(), "the diagonal proposal gives the removed strip back"
    for masks_p in masks.values():  # the edges of the grid do not depend on it
        np.testing.assert_array_equal(masks_p[(0, 1)], masks["merged"][(0, 1)])
        np.testing.assert_array_equal(masks_p[(1, 0)], masks["merged"][(1, 0)])


def test_merged_previous_lets_the_state_overrule_a_decision():
    # A proposal that sees both clicks may still give back part of the removal.
    def overrule(states, previous):
        out = _region_proposer()(states, previous)
        for (i, j), mask in zip(states, out):
            if i and j:
                mask[0, 6:8] = True
        return out

    merged = monotone_masks(1, 1, _strip_base(), overrule, previous="merged")[(1, 1)]
    assert merged[0, 6:8].all() and not merged[1:, 6:8].any() and merged[:, 0:2].all()


@pytest.mark.parametrize("seed", range(5))
def test_a_contest_decides_the_states_with_both_kinds_of_click(seed):
    base = np.random.RandomState(seed).rand(12, 12) > 0.5
    proposed, contested = [], {}
    propose = _random_proposer(seed)

    def counting(states, previous):
        proposed.extend(states)
        return propose(states, previous)

    def contest(state, lower, diagonal, upper):
        contested[state] = (lower.copy(), diagonal.copy(), upper.copy())
        return _random_contest(seed)(state, lower, diagonal, upper)

    masks = monotone_masks(4, 3, base, counting, contest=contest)
    assert sorted(proposed) == sorted([(i, 0) for i in range(1, 5)] + [(0, j) for j in range(1, 4)])
    assert sorted(contested) == [(i, j) for i in range(1, 5) for j in range(1, 4)]
    for (i, j), (lower, diagonal, upper) in contested.items():  # each contest saw its own bounds
        np.testing.assert_array_equal(lower, masks[(i - 1, j)])
        np.testing.assert_array_equal(diagonal, masks[(i - 1, j - 1)])
        np.testing.assert_array_equal(upper, masks[(i, j - 1)])
    _assert_monotone(masks)  # the contests clipped to their bounds


def test_unknown_previous_is_refused():
    with pytest.raises(ValueError, match="previous"):
        monotone_masks(1, 1, np.ones((3, 3), bool), _region_proposer(), previous="sideways")


def _local_changes_by_definition(proposal, previous, foreground, background, reach, spacing):
    """:func:`local_changes` as its docstring defines it, click by click: the connected
    changes of the click's kind, no deeper in ``previous`` than ``reach`` times the click's
    depth, that contain or touch the click."""
    out = previous.copy()
    structure = ndimage.generate_binary_structure(previous.ndim, previous.ndim)
    for change, points, value in ((proposal & ~previous, foreground, True), (previous & ~proposal, background, False)):
        depth = np.full(previous.shape, np.inf)
        if change.any():
            depth[change] = boundary_depth(previous, np.argwhere(change), spacing) if np.isfinite(reach) else 0.0
        for point in points:
            limit = reach * boundary_depth(previous, point[None], spacing)[0] if np.isfinite(reach) else 0.0
            labels, _ = ndimage.label(change & (depth <= limit), structure)
            seed = np.zeros(previous.shape, bool)
            seed[tuple(point)] = True
            touched = np.unique(labels[ndimage.binary_dilation(seed, structure)])
            out[np.isin(labels, touched[touched > 0])] = value
    return out


@pytest.mark.parametrize("seed", range(40))
def test_local_changes_match_their_definition_click_by_click(seed):
    """:func:`local_changes` labels the changes once for all clicks whose limit reaches the
    deepest change and skips clicks that touch none they may keep; the result must be what
    each click keeps on its own (2D and 3D, anisotropic spacing, clicks in and away from the
    changes, with and without a depth limit)."""
    rng = np.random.default_rng(seed)
    shape = (40, 48) if seed % 2 else (14, 16, 12)
    previous = ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.5
    proposal = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5
    anywhere = np.argwhere(np.ones(shape, bool))

    def clicks(region):
        inside = np.argwhere(region)
        picked = [inside[rng.choice(len(inside), min(3, len(inside)), replace=False)]] if len(inside) else []
        return np.concatenate(picked + [anywhere[rng.choice(len(anywhere), 2, replace=False)]])

    fg, bg = clicks(proposal & ~previous), clicks(previous & ~proposal)
    reach = [np.inf, 0.5, 1.0, 3.0][seed % 4]
    spacing = (1.0, 2.0) if len(shape) == 2 else (1.0, 1.5, 2.0)
    np.testing.assert_array_equal(local_changes(proposal, previous, fg, bg, reach, spacing),
                                  _local_changes_by_definition(proposal, previous, fg, bg, reach, spacing))


def test_local_changes_keep_only_what_touches_a_click():
    previous = np.zeros((10, 10), bool)
    previous[2:8, 2:8] = True
    proposal = previous.copy()
    proposal[0:2, 0:10] = True  # added strip along the top, touched by the fg click
    proposal[9, 9] = True  # added far away
    proposal[4:6, 4:6] = False  # removed hole, touched by the bg click
    proposal[7, 7] = False  # removed elsewhere
    out = local_changes(proposal, previous, np.array([[0, 5]]), np.array([[4, 4]]))
    assert out[0:2].all() and not out[9, 9], "only the added region at the click is kept"
    assert not out[4:6, 4:6].any() and out[7, 7], "only the removed region at the click is kept"


@pytest.mark.parametrize("shape,spacing", [((40, 37), (1.0, 1.0)), ((30, 25), (0.7, 2.0)), ((12, 14, 9), (1.0, 0.8, 3.0))])
def test_boundary_depth_is_the_distance_transform_at_the_points(shape, spacing):
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random(shape) > 0.45)
    points = np.argwhere(np.ones(shape, bool))
    edt = np.where(mask, ndimage.distance_transform_edt(mask, sampling=spacing), ndimage.distance_transform_edt(~mask, sampling=spacing))
    np.testing.assert_allclose(boundary_depth(mask, points, spacing), np.maximum(edt, min(spacing)).ravel(), rtol=1e-9)
    assert (boundary_depth(np.zeros(shape, bool), points[:3], spacing) == max(np.multiply(shape, spacing))).all()


def test_a_reach_limit_keeps_a_background_click_to_its_band():
    previous = np.zeros((20, 20), bool)
    previous[2:18, 2:18] = True
    proposal = previous.copy()
    proposal[2:12, 2:18] = False  # the proposal removes the top 10 rows
    click = np.array([[3, 10]])  # 2 pixels deep: it may remove what is at most 4 deep
    out = local_changes(proposal, previous, np.zeros((0, 2), np.int64), click, reach=2.0)
    removed = previous & ~out
    assert removed[2:6, 2:18].all() and not removed[6:12, 6:14].any() and not removed[12:].any()
    np.testing.assert_array_equal(local_changes(proposal, previous, np.zeros((0, 2), np.int64), click), proposal)
    big = np.zeros((40, 40), bool)
    big[10:30, 10:30] = True
    # a foreground click 2 pixels outside may add what is at most 4 deep outside, not the whole grid
    added = local_changes(np.ones((40, 40), bool), big, np.array([[8, 20]]), np.zeros((0, 2), np.int64), reach=2.0) & ~big
    assert added[6:10, 10:30].all() and not added[:6].any() and not added[34:].any()


def test_claimed_changes_keep_only_what_the_nearest_seeds_say():
    """A row of 20 voxels: the previous mask covers 0-9, a foreground seed at 9 and a
    background seed at 17 (Euclidean distances, midpoint 13). A proposal that removes 0-5
    and adds 10-17 keeps the additions nearer to the foreground seed (10-12) and none of the
    removals (0-5 are nearer to the foreground seed)."""
    x = np.arange(20, dtype=float)
    previous = x < 10
    proposal = (x >= 6) & (x < 18)
    d_fg, d_bg = np.abs(x - 9), np.abs(x - 17)
    np.testing.assert_array_equal(claimed_changes(proposal, previous, d_fg, d_bg), x < 13)
    # only one kind claimed: the other stands as proposed
    np.testing.assert_array_equal(claimed_changes(proposal, previous, d_fg, d_bg, additions=False), x < 18)
    np.testing.assert_array_equal(claimed_changes(proposal, previous, d_fg, d_bg, removals=False), (x >= 6) & (x < 13))
    # seeds of one kind that claim every voxel let that kind of change through unchanged
    np.testing.assert_array_equal(claimed_changes(proposal, previous, 0 * x, 0 * x + 1), previous | proposal)
    np.testing.assert_array_equal(claimed_changes(proposal, previous, 0 * x + 1, 0 * x), previous & proposal)
    with pytest.raises(ValueError, match="shapes"):
        claimed_changes(proposal, previous, d_fg[:5], d_bg)


def test_changes_near_clicks_keep_a_click_to_its_own_reach():
    """A 2D leak: the previous mask is the object (columns 0-29) plus a leak (columns 30-59,
    rows 20-39, 20 wide). A background click at its centre (row 30, column 45) is 10 deep
    (to the leak's top and bottom edges). A proposal that removes the whole leak and the
    object's columns 0-9 keeps, with radius 2, only the removals within 20 voxels of the
    click: most of the leak, none of the object; a foreground addition 40 voxels from every
    foreground click is refused while one next to the click stands."""
    previous = np.zeros((60, 80), dtype=bool)
    previous[:, :30] = True
    previous[20:40, 30:60] = True
    proposal = previous.copy()
    proposal[20:40, 30:60] = False
    proposal[:, :10] = False
    click = np.array([[30, 45]])
    assert boundary_depth(previous, click)[0] == 10
    out = changes_near_clicks(proposal, previous, np.zeros((0, 2)), click, radius=2.0)
    rows, cols = np.mgrid[:60, :80]
    within = (rows - 30) ** 2 + (cols - 45) ** 2 <= 20**2
    np.testing.assert_array_equal(out, previous & ~(within & previous & ~proposal))
    assert out[:, :10].all() and not out[30, 45] and out[20, 59] == (not within[20, 59])
    # additions: one next to a foreground click at (30, 70) (depth 10 to the leak's end), one far from it
    grown = previous.copy()
    grown[28:33, 60:75] = True
    grown[0:5, 40:45] = True
    out = changes_near_clicks(grown, previous, np.array([[30, 70]]), np.zeros((0, 2)), radius=1.5)
    assert out[28:33, 60:75].all() and not out[0:5, 40:45].any()
    with pytest.raises(ValueError, match="radius must be > 0"):
        changes_near_clicks(proposal, previous, click, click, radius=0)


def test_signed_depth_is_the_boundary_depth_with_the_side_as_sign():
    """Inside voxels positive, outside negative, equal in size to :func:`boundary_depth` at
    every voxel (anisotropic spacing); no boundary, no map."""
    mask = np.zeros((12, 14, 9), dtype=bool)
    mask[3:9, 2:11, 2:7] = True
    spacing = (1.0, 0.5, 2.0)
    depth = signed_depth(mask, spacing)
    points = np.argwhere(np.ones(mask.shape, dtype=bool))
    np.testing.assert_allclose(np.abs(depth[tuple(points.T)]), boundary_depth(mask, points, spacing))
    assert (depth[mask] > 0).all() and (depth[~mask] < 0).all()
    assert signed_depth(np.zeros((4, 4), bool)) is None and signed_depth(np.ones((4, 4), bool)) is None
