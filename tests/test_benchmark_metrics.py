"""The benchmark's measures of the field (lib/benchmark/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.benchmark.metrics import (
    dsc_auc, error_removed_per_click, fixed_share, mean_fixed_share, normalised_surface_dice, padded_dice,
    pointed_error_region, step_statistics, unchanged_share,
)
from tests.conftest import ellipsoid_mask


def test_dsc_auc_is_the_trapezoid_area_over_five_clicks():
    assert dsc_auc([0.5, 0.7, 0.8, 0.9, 0.9, 1.0, 0.2]) == pytest.approx(0.6 + 0.75 + 0.85 + 0.9 + 0.95)
    # a run that stopped early (nothing left to click) keeps its last value
    assert dsc_auc([0.5, 1.0]) == pytest.approx(0.75 + 4 * 1.0)
    np.testing.assert_allclose(padded_dice([0.5, 1.0], 3), [0.5, 1.0, 1.0, 1.0])


def test_nsd_counts_surface_within_the_tolerance_in_mm():
    ref = ellipsoid_mask((60, 60), (30, 30), 12)
    shifted = np.roll(ref, 1, axis=0)  # 1 voxel = 1 mm, inside a 2 mm tolerance
    far = np.roll(ref, 6, axis=0)
    assert normalised_surface_dice(ref, ref, (1.0, 1.0)) == pytest.approx(1.0)
    assert normalised_surface_dice(shifted, ref, (1.0, 1.0)) == pytest.approx(1.0)
    assert normalised_surface_dice(shifted, ref, (3.0, 3.0)) < 0.9, "the tolerance is in mm, not voxels"
    assert 0.1 < normalised_surface_dice(far, ref, (1.0, 1.0)) < 0.7
    assert normalised_surface_dice(np.zeros_like(ref), ref, None) == 0.0


def test_step_statistics_give_mean_gain_and_the_share_of_clicks_that_hurt():
    gain, worse = step_statistics([[0.5, 0.6, 0.58, 0.7], [0.9, 0.8]])
    assert gain == pytest.approx((0.1 - 0.02 + 0.12 - 0.1) / 4)
    assert worse == pytest.approx(2 / 4)  # -0.02 and -0.1 are worse by more than 0.01
    assert step_statistics([[0.8]]) == (0.0, 0.0)


def test_error_removed_per_click_compares_clicks_across_starting_points():
    """A click from 0.5 to 0.75 and one from 0.96 to 0.98 both remove half the remaining
    error, though their Dice gains differ tenfold; a click that halves Dice from 0.8 adds
    twice the error it had; clicks at Dice 1 are left out."""
    assert error_removed_per_click([[0.5, 0.75], [0.96, 0.98]]) == pytest.approx(0.5)
    assert error_removed_per_click([[0.8, 0.4]]) == pytest.approx(-2.0)
    assert error_removed_per_click([[1.0, 1.0, 0.9], [0.6, 0.8]]) == pytest.approx(0.5), "only the click from 0.6 counts"
    assert error_removed_per_click([[0.7]]) == 0.0


def test_unchanged_share_counts_the_clicks_that_do_nothing_either_way():
    """Issue 10's complaint, as a number: clicks that move Dice by less than 0.0001, up or down."""
    assert unchanged_share([[0.8, 0.80005, 0.9, 0.89995], [0.5, 0.5]]) == pytest.approx(0.75)
    assert unchanged_share([[0.8, 0.81, 0.79]]) == 0.0
    assert unchanged_share([[0.8]]) == 0.0


def test_pointed_error_region_is_the_clicked_component_of_the_clicks_kind():
    ref = np.zeros((20, 20), bool)
    ref[5:15, 5:15] = True
    mask = ref.copy()
    mask[5:15, 5:7] = False  # a missed strip on the left
    mask[5:7, 12:15] = False  # a missed corner, a separate component
    mask[16:19, 8:12] = True  # a leak below
    region = pointed_error_region(mask, ref, (10, 5), foreground=True)
    assert region.sum() == 20 and region[5:15, 5:7].all() and not region[5:7, 12:15].any()
    assert pointed_error_region(mask, ref, (17, 9), foreground=False).sum() == 12
    # a click of the other kind, or off the error, points at nothing
    assert not pointed_error_region(mask, ref, (17, 9), foreground=True).any()
    assert not pointed_error_region(mask, ref, (10, 10), foreground=True).any()
    # fixed share: nothing done 0, the strip fixed 1, half of it 0.5
    after = mask.copy()
    assert fixed_share(region, after, ref) == 0.0
    after[5:15, 5:7] = True
    assert fixed_share(region, after, ref) == 1.0
    after[5:15, 5] = False
    assert fixed_share(region, after, ref) == 0.5
    assert np.isnan(fixed_share(np.zeros_like(ref), after, ref))
    assert mean_fixed_share([[0.0, 1.0], [None, 0.5, float("nan")]]) == 0.5
    assert np.isnan(mean_fixed_share([[]]))
