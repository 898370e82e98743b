"""End-to-end refinement on a real 2D case (HC18 fetal head) with an oracle "CNN".

The oracle's foreground probability is the ground truth shifted by (6, -8) px and blurred
(Gaussian, sigma 6), restricted to the relaxed box of the margin points at the original
resolution. Stage 1 is the graph cut on it with the margin points as hard foreground; then
three robot corrective clicks, each followed by the fusion (Eq. 3-7) and the graph cut.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from lib.metrics import dice
from lib.transforms.crop import box_slices, relaxed_box
from lib.transforms.fusion import click_distances, fuse_probability
from lib.transforms.graph_cut import graph_cut
from lib.transforms.margin_points import extreme_margin_points
from lib.transforms.robot_user import corrective_click

SHIFT = (6, -8)
SIGMA = 6.0
N_CLICKS = 3


def _validation_case(shared_data, index=-1):
    """An HC18 image with NNN >= 700 (validation split) and its label, as float32 / uint8."""
    Image = pytest.importorskip("PIL.Image")
    images = shared_data / "hc18" / "images"
    labels = shared_data / "hc18" / "labels"
    if not images.is_dir() or not labels.is_dir():
        pytest.skip("HC18 data not present")
    files = sorted(p for p in images.glob("*.png") if int(p.name.split("_")[0]) >= 700 and (labels / p.name).exists())
    if not files:
        pytest.skip("no HC18 validation image with a label")
    path = files[index]
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    label = (np.asarray(Image.open(labels / path.name)) > 0).astype(np.uint8)
    return path.name, image, label


def _oracle_probability(label):
    shifted = ndimage.shift(label.astype(np.float32), SHIFT, order=0)
    return np.clip(ndimage.gaussian_filter(shifted, SIGMA), 0.0, 1.0)


@pytest.mark.parametrize("index", [-1, -2])
def test_oracle_refinement_improves_dice(shared_data, index):
    name, image, label = _validation_case(shared_data, index)
    assert image.shape == label.shape and label.any()
    t0 = time.perf_counter()

    margin = extreme_margin_points(label)
    box = relaxed_box(margin, label.shape)
    sl = box_slices(box)
    img, ref = image[sl], label[sl]
    assert ref.sum() == label.sum(), "the relaxed box must contain the whole head"
    prob = _oracle_probability(label)[sl]
    fg = margin - box[0]  # margin points count as foreground clicks
    bg = np.zeros((0, 2), dtype=np.int64)
    assert np.all(ref[tuple(fg.T)] == 1)

    seg = graph_cut(img, prob, foreground=fg)
    dice_stage1 = dice(seg, ref)
    assert np.all(seg[tuple(fg.T)] == 1)

    dices = [dice_stage1]
    for _ in range(N_CLICKS):
        click = corrective_click(seg, ref, clicked=np.concatenate([fg, bg]))
        assert click is not None
        point, is_fg = click
        assert ref[tuple(point)] == int(is_fg) and seg[tuple(point)] != int(is_fg)
        if is_fg:
            fg = np.concatenate([fg, point[None]])
        else:
            bg = np.concatenate([bg, point[None]])
        d_fg, d_bg = click_distances(img, fg[len(margin):], bg, margin=margin - box[0])
        fused = fuse_probability(prob, d_fg, d_bg)
        seg = graph_cut(img, fused, fg, bg)
        assert np.all(seg[tuple(fg.T)] == 1) and np.all(seg[tuple(bg.T)] == 0)
        dices.append(dice(seg, ref))

    elapsed = time.perf_counter() - t0
    print(f"{name}: Dice stage 1 {dice_stage1:.4f}, after {N_CLICKS} clicks {dices[-1]:.4f} "
          f"(per click {[round(d, 4) for d in dices]}, {len(fg) - len(margin)} fg / {len(bg)} bg clicks, "
          f"{elapsed:.2f} s)")
    assert dices[-1] > dice_stage1
    assert dices[-1] > 0.9
