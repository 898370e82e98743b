"""Dice (Eq. 12) and average symmetric surface distance (Eq. 13)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lib.metrics import assd, dice


def _square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def _surface_brute(mask):
    """Object voxels with a 4/6-connected background neighbour (outside the image counts)."""
    m = np.pad(mask > 0, 1)
    out = []
    for idx in np.argwhere(m):
        for axis, step in itertools.product(range(m.ndim), (-1, 1)):
            n = idx.copy()
            n[axis] += step
            if not m[tuple(n)]:
                out.append(idx - 1)
                break
    return np.array(out)


def _assd_brute(a, b, spacing):
    sa, sb = _surface_brute(a) * spacing, _surface_brute(b) * spacing
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return (d.min(1).sum() + d.min(0).sum()) / (len(sa) + len(sb))


# --- Dice ---------------------------------------------------------------------------------------


def test_dice_hand_cases():
    a = _square((30, 30), 0, 10, 0, 10)
    assert dice(a, a) == 1.0
    assert dice(a, _square((30, 30), 20, 30, 20, 30)) == 0.0
    # overlap of 5 x 10 = 50 voxels, 100 each: 2 * 50 / 200
    assert dice(a, _square((30, 30), 5, 15, 0, 10)) == pytest.approx(0.5)
    # 10x10 inside 20x20: 2 * 100 / 500
    assert dice(a, _square((30, 30), 0, 20, 0, 20)) == pytest.approx(0.4)


def test_dice_empty_and_non_binary():
    z = np.zeros((5, 5, 5))
    assert dice(z, z) == 1.0
    one = z.copy()
    one[2, 2, 2] = 1
    assert dice(z, one) == 0.0
    assert dice(one * 7, one) == 1.0  # any positive value is foreground


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


# --- ASSD ---------------------------------------------------------------------------------------


def test_assd_identical_is_zero():
    a = _square((30, 30), 4, 20, 5, 25)
    assert assd(a, a) == 0.0
    assert assd(a, a, spacing=(2.0, 0.5)) == 0.0
    assert assd(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0


def test_assd_single_voxels():
    a, b = np.zeros((20, 20)), np.zeros((20, 20))
    a[2, 3] = 1
    b[5, 7] = 1
    assert assd(a, b) == pytest.approx(5.0)
    assert assd(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6.0**2 + 4.0**2))


def test_assd_shifted_squares_hand_value():
    # two 10 x 10 squares (36 boundary voxels each), b shifted 2 rows down, rows 1.5 mm apart.
    # a -> b: top row 10 x 3 mm; the two voxels of row 6 on the side columns 1.5 mm each;
    # side columns rows 7..14 lie on b's boundary (0); bottom row columns 6..13 are
    # 1, 2, 3, 3, 3, 3, 2, 1 mm from b's side columns or b's bottom row (3 mm).
    # Sum 30 + 3 + 18 = 51, the same for b -> a by symmetry: ASSD = 102 / 72.
    a = _square((30, 30), 5, 15, 5, 15)
    b = _square((30, 30), 7, 17, 5, 15)
    assert assd(a, b, spacing=(1.5, 1.0)) == pytest.approx(102.0 / 72.0)
    assert assd(a, b, spacing=(1.5, 1.0)) == pytest.approx(_assd_brute(a, b, np.array([1.5, 1.0])))


def test_assd_thin_lines_exact():
    # two horizontal 1-voxel lines of equal length, 3 rows apart: every surface voxel is
    # exactly 3 rows (3 * 2 mm) from the other line
    a = _square((20, 20), 5, 6, 2, 12)
    b = _square((20, 20), 8, 9, 2, 12)
    assert assd(a, b) == pytest.approx(3.0)
    assert assd(a, b, spacing=(2.0, 1.0)) == pytest.approx(6.0)


def test_assd_concentric_squares_brute_force():
    a = _square((40, 40), 5, 36, 5, 36)  # 31 x 31
    b = _square((40, 40), 15, 26, 15, 26)  # 11 x 11, same centre
    value = assd(a, b)
    assert value == pytest.approx(_assd_brute(a, b, np.ones(2)), rel=1e-9)
    # every boundary voxel of b is at least 10 voxels from a's boundary, at most 10 * sqrt(2)
    assert 10.0 <= value <= 10.0 * math.sqrt(2)


def test_assd_3d_brute_force():
    a = np.zeros((12, 12, 8), dtype=np.uint8)
    a[2:9, 3:10, 2:6] = 1
    b = np.roll(a, (1, -1, 1), axis=(0, 1, 2))
    b[5, 5, 5] = 0
    spacing = np.array([0.8, 1.0, 2.5])
    assert assd(a, b, spacing) == pytest.approx(_assd_brute(a, b, spacing), rel=1e-9)
    assert assd(a, b, spacing) == pytest.approx(assd(b, a, spacing))  # symmetric


def test_assd_empty_prediction_is_inf():
    a = _square((10, 10), 2, 5, 2, 5)
    assert assd(np.zeros_like(a), a) == math.inf
    assert assd(a, np.zeros_like(a)) == math.inf


def test_assd_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        assd(np.zeros((3, 3)), np.zeros((3, 4)))
