"""The shipped refinement through the infer task, on unseen objects of the sample study:
monotone clicks, clicked voxels, exact undo, statelessness, and clicks that help.

Object: the left lateral ventricle of the brain MRI (FreeSurfer label 4, automatic), not seen
in training; 2D: on the slice with the largest reference area; 3D: the whole ventricle."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lib.benchmark.methods import MIDeepSegMethod, force_clicks
from lib.benchmark.protocol import run_protocol
from lib.metrics import dice

APP = Path(__file__).resolve().parents[1] / "apps" / "midepseg"
STUDY, REFERENCES = APP / "sample_study", APP / "sample_references"
CLICKS = 4
# Dice after 3 robot clicks minus Dice of the stage-1 mask with the same 3 clicked voxels
# forced (a do-nothing refinement), measured with the shipped weights: 2D ventricle slice
# +0.010 with session 19's refinement weights (0.897 against 0.887; +0.0081 with session 18's:
# 0.8950 against 0.8869) and the 2D default since session 18 (learned + IF-GC with claims and the
# depth limit, reach_limit 1; without the depth limit +0.0114: 0.8983; +0.011 when the
# claims came in; with the previous weights the repaired IF-GC alone gave +0.003);
# 3D ventricle +0.0052 (the 3D default since session 16, graph cut lamda 20 / sigma 0.03, radius
# limit 5: 0.8572 against 0.8520, stage 1 0.8519; the do-nothing refinement gains 0.0001). The 3D spleen
# was the 3D case until then (0.825 against 0.785 with the paper's cut); with the new cut its
# stage 1 reaches 0.926 and what is left is a shell about a voxel thick, which 3 clicks reduce
# by 0.0017.
MIN_GAIN = {2: 0.005, 3: 0.003}
CASES = {2: "brain_t1.nii.gz", 3: "brain_t1.nii.gz"}


def _case(name: str, dim: int):
    image = nib.load(str(STUDY / name))
    arr = np.asarray(image.dataobj, dtype=np.float32)
    ref = np.asarray(nib.load(str(REFERENCES / name)).dataobj) > 0
    spacing = np.abs(np.diag(image.affine)[:3])
    if dim == 2:
        k = int(np.argmax(ref.sum(axis=(0, 1))))
        return arr[..., k], ref[..., k], spacing[:2]
    return arr, ref, spacing


def _request(method: MIDeepSegMethod, image, spacing, margin, clicks) -> np.ndarray:
    fg = np.asarray([c["point"] for c in clicks if c["foreground"]], dtype=np.int64).reshape(-1, image.ndim)
    bg = np.asarray([c["point"] for c in clicks if not c["foreground"]], dtype=np.int64).reshape(-1, image.ndim)
    return method.segment(image, spacing, margin, fg, bg)


@pytest.fixture(scope="module", params=[2, 3])
def session(request):
    dim = request.param
    image, ref, spacing = _case(CASES[dim], dim)
    method = MIDeepSegMethod(dim)
    result = run_protocol(method, image, ref, spacing, CLICKS, keep_masks=range(CLICKS + 1))
    yield dim, method, image, ref, spacing, result
    method.close()


def test_clicks_are_monotone_and_keep_their_label(session):
    dim, method, image, ref, spacing, result = session
    assert len(result.clicks) == CLICKS
    kinds = {c["foreground"] for c in result.clicks}
    for k, click in enumerate(result.clicks, start=1):
        before, after = result.masks[k - 1].astype(bool), result.masks[k].astype(bool)
        if click["foreground"]:
            assert not (before & ~after).any(), f"foreground click {k} removed voxels"
        else:
            assert not (after & ~before).any(), f"background click {k} added voxels"
        for c in result.clicks[:k]:
            assert after[tuple(c["point"])] == c["foreground"], f"clicked voxel {c['point']} lost its label"
    print(f"{dim}D: click kinds {kinds}, Dice {[round(d, 3) for d in result.dice]}")


def test_undo_and_a_cold_server_give_exactly_the_same_masks(session):
    dim, method, image, ref, spacing, result = session
    cold = MIDeepSegMethod(dim)  # nothing cached: every state computed from the request alone
    try:
        for k in (CLICKS, CLICKS - 1):  # the last state, then the state after undoing its click
            mask = _request(cold, image, spacing, result.margin_points, result.clicks[:k])
            np.testing.assert_array_equal(mask, result.masks[k])
        again = _request(method, image, spacing, result.margin_points, result.clicks[: CLICKS - 1])
        np.testing.assert_array_equal(again, result.masks[CLICKS - 1])  # undo on the warm task
    finally:
        cold.close()


def test_a_stage1_sigma_applies_to_the_stage1_cut_only():
    """``--conf stage1_sigma 0.2``: the stage-1 mask is the one a request with ``sigma 0.2``
    gets (and differs from the default's on the 2D sample slice: 7 pixels measured), while the
    refinement's cuts keep the task's sigma: after the default's 3 robot clicks its mask differs
    from the ``sigma 0.2`` request's (2 pixels measured; 3 with session 18's refinement weights),
    which a stage-1 sigma leaking into the refinement would make equal."""
    image, ref, spacing = _case(CASES[2], 2)
    staged, everywhere, default = (MIDeepSegMethod(2, conf={"stage1_sigma": "0.2"}), MIDeepSegMethod(2, options={"sigma": 0.2}),
                                   MIDeepSegMethod(2))
    try:
        result = run_protocol(default, image, ref, spacing, 3)
        for clicks in ([], result.clicks):
            masks = [_request(m, image, spacing, result.margin_points, clicks) for m in (staged, everywhere, default)]
            if not clicks:
                np.testing.assert_array_equal(masks[0], masks[1])
                assert (masks[0] != masks[2]).any(), "sigma 0.2 changes nothing here: the case does not test the option"
            else:
                assert (masks[0] != masks[1]).any(), "the refinement cut with the stage-1 sigma"
    finally:
        for m in (staged, everywhere, default):
            m.close()


def test_three_clicks_beat_a_do_nothing_refinement(session):
    dim, method, image, ref, spacing, result = session
    clicks = result.clicks[:3]
    fg = [c["point"] for c in clicks if c["foreground"]]
    bg = [c["point"] for c in clicks if not c["foreground"]]
    nothing = dice(force_clicks(result.masks[0], result.margin_points, fg, bg), ref)
    gained = result.dice[3]
    print(f"{dim}D {CASES[dim]}: stage 1 {result.dice[0]:.3f}, forced clicks {nothing:.3f}, refined {gained:.3f}")
    assert gained > nothing + MIN_GAIN[dim], (gained, nothing)


def test_refinement_presets_and_options_are_checked():
    from configs.midepseg import MIDeepSeg2DConfig

    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP / "model"), {"refinement": "learned", "monotone": "false"}, None)
    task = config.infer()
    assert task.refinement == "learned" and task.options.monotone is False and task.options.proposal == "learned"
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP / "model"), {"temperature": "3"}, None)
    assert config.infer().options.temperature == 3.0
    from configs.midepseg import MIDeepSeg3DConfig

    config = MIDeepSeg3DConfig()
    config.init("midepseg_3d", str(APP / "model"), {}, None)
    task3d = config.infer()
    assert task3d.options.previous == "merged", "the 3D default refines the merged parents"
    assert task3d.stage1_resolution == "image", "the 3D default places stage 1 at the image's resolution"
    config = MIDeepSeg3DConfig()
    config.init("midepseg_3d", str(APP / "model"), {"stage1_resolution": "work"}, None)
    assert config.infer().stage1_resolution == "work"
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP / "model"), {"previous": "merged"}, None)
    assert config.infer().options.previous == "merged"
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP / "model"), {}, None)
    task2d = config.infer()
    assert task2d.options.reach_limit == 1.0, "the 2D default's depth limit"
    assert task2d.options.contest == task3d.options.contest == "nearest", "both defaults decide contested voxels by the nearer click"
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP / "model"), {"reach_limit": "0"}, None)
    assert config.infer().options.reach_limit == 0.0
    for bad, message in (({"refinement": "magic"}, "refinement must be one of"), ({"proposal": "magic"}, "proposal must be one of"),
                         ({"learned_cut": "magic"}, "learned_cut must be one of"), ({"temperature": "0"}, "temperature must be > 0"),
                         ({"geodesic_weight": "-1"}, "geodesic_weight must be >= 0"),
                         ({"radius_limit": "-1"}, "radius_limit must be >= 0"),
                         ({"reach_limit": "nan"}, "reach_limit must be >= 0"), ({"stage1_sigma": "0"}, "stage1_sigma must be > 0"),
                         ({"spatial_term": "manhattan"}, "spatial_term must be one of"),
                         ({"previous": "sideways"}, "previous must be one of"),
                         ({"contest": "coin"}, "contest must be one of"),
                         ({"band_reach": "0"}, "band_reach must be > 0"),
                         ({"seed_radius": "1"}, r"seed_radius must be in \[0, 1\)"),
                         ({"seed_limit": "-1"}, "seed_limit must be >= 0"),
                         ({"work_voxels": "3"}, "work_voxels must be at least")):
        config = MIDeepSeg2DConfig()
        config.init("midepseg_2d", str(APP / "model"), bad, None)
        with pytest.raises(ValueError, match=message):
            config.infer()


def test_learned_proposal_without_the_monotone_grid_answers_one_pass_per_click():
    """``--conf monotone false``: one pass of the learned proposal per click, clicked voxels
    kept, and the clicks help overall (measured 0.882 -> 0.934 after 5 clicks). Single clicks
    may lower Dice without the grid, which is why it is the default: with session 18's
    refinement weights the 4th fell 0.923 -> 0.845 here; with session 19's none falls by more
    than 0.001 on this case."""
    image, ref, spacing = _case("brain_t1.nii.gz", 2)
    method = MIDeepSegMethod(2, "learned", conf={"monotone": "false"})
    try:
        result = run_protocol(method, image, ref, spacing, 5, keep_masks=range(6))
    finally:
        method.close()
    for k, click in enumerate(result.clicks, start=1):
        assert result.masks[k][tuple(click["point"])] == click["foreground"]
    assert result.dice[5] > result.dice[0] + 0.03


def test_an_uploaded_mask_in_2d_is_refined_by_the_clicks(tmp_path):
    """The 2D default refines an uploaded mask (no margin points, no network): two
    background clicks on a leak remove most of it and nothing of the object, where forcing
    the two clicked voxels alone would remove 2 of its pixels."""
    image, ref, spacing = _case("brain_t1.nii.gz", 2)
    rows = np.nonzero(ref.any(1))[0]
    cols = np.nonzero(ref[rows[-1]])[0]
    leak = np.zeros_like(ref)
    leak[rows[-1] + 1 : rows[-1] + 5, cols.min() : cols.max() + 1] = True
    path = tmp_path / "start.nii.gz"
    nib.save(nib.Nifti1Image((ref | leak).astype(np.uint8), np.diag([*spacing, 1.0, 1.0])), str(path))
    bg = np.argwhere(leak)[[0, -1]]
    method = MIDeepSegMethod(2, options={"label": str(path)})
    try:
        mask = method.segment(image, spacing, np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64), bg).astype(bool)
    finally:
        method.close()
    removed = (leak & ~mask).sum() / leak.sum()
    print(f"2D upload: {leak.sum()} leak pixels, {removed:.0%} removed by 2 background clicks, "
          f"{(ref & ~mask).sum()} object pixels lost")
    assert removed > 0.5 and (ref & ~mask).sum() <= 0.05 * ref.sum()


def test_new_refinement_weights_are_picked_up_by_a_running_task(tmp_path):
    """Publishing other refinement weights (as the click trainer does, atomically) changes
    the next answer of a task that already answered: no stale network, no stale cache."""
    import shutil
    import time

    import torch

    image, ref, spacing = _case("brain_t1.nii.gz", 2)
    for name in ("midepseg_2d.pt", "midepseg_2d_refine.pt"):
        shutil.copy(APP / "model" / name, tmp_path / name)
    method = MIDeepSegMethod(2, model_dir=tmp_path)
    try:
        result = run_protocol(method, image, ref, spacing, 2, keep_masks=(2,))
        fg = [c["point"] for c in result.clicks if c["foreground"]]
        bg = [c["point"] for c in result.clicks if not c["foreground"]]
        again = method.segment(image, spacing, result.margin_points, np.reshape(fg, (-1, 2)), np.reshape(bg, (-1, 2)))
        np.testing.assert_array_equal(again, result.masks[2])
        state = torch.load(tmp_path / "midepseg_2d_refine.pt", weights_only=True)
        state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}  # a network that answers 0.5
        time.sleep(0.01)
        torch.save(state, tmp_path / "midepseg_2d_refine.tmp")
        os.replace(tmp_path / "midepseg_2d_refine.tmp", tmp_path / "midepseg_2d_refine.pt")
        changed = method.segment(image, spacing, result.margin_points, np.reshape(fg, (-1, 2)), np.reshape(bg, (-1, 2)))
    finally:
        method.close()
    assert (changed != result.masks[2]).any(), "the task kept answering with the old refinement weights"


def test_the_shipped_3d_learned_refinement_runs_on_its_own_grid_and_helps():
    """``--conf refinement learned`` in 3D: the shipped network runs on the 64 x 64 x 48 grid
    its checkpoint records, each click is monotone, and 3 clicks beat the do-nothing
    refinement on the unseen ventricle (measured 0.804 against 0.743). It was trained on the
    shipped network's stage 1, so it runs with that network alone (``stage1_ensemble none``:
    on the ensemble's better stage 1 it does not help, 0.825 against 0.863)."""
    image, ref, spacing = _case("brain_t1.nii.gz", 3)
    method = MIDeepSegMethod(3, "learned", conf={"stage1_ensemble": "none"})
    try:
        result = run_protocol(method, image, ref, spacing, 3, keep_masks=range(4))
        assert method.task._learned.grid == (64, 64, 48)
    finally:
        method.close()
    for k, click in enumerate(result.clicks, start=1):
        before, after = result.masks[k - 1].astype(bool), result.masks[k].astype(bool)
        assert not ((before & ~after) if click["foreground"] else (after & ~before)).any()
    fg = [c["point"] for c in result.clicks if c["foreground"]]
    bg = [c["point"] for c in result.clicks if not c["foreground"]]
    nothing = dice(force_clicks(result.masks[0], result.margin_points, fg, bg), ref)
    print(f"3D learned: stage 1 {result.dice[0]:.3f}, forced clicks {nothing:.3f}, refined {result.dice[3]:.3f}")
    assert result.dice[3] > nothing + 0.03


def _dice_per_setting(dim: int, dataset: str, name: str, key: str, values, clicks: int, options: dict | None = None,
                      conf: dict | None = None) -> dict:
    """Dice after the margin points and each of ``clicks`` robot clicks on one case of the dev
    set (``scripts/benchmark_clicks.py --preset shared``), per value of the ``--conf`` ``key``;
    ``options``: request parameters sent with every interaction; ``conf``: further settings."""
    from scripts.benchmark_clicks import _ArrayCache, load_case, preset_shared_cases

    case = next(c for c in preset_shared_cases([dim]) if c["dataset"] == dataset and c["name"] == name)
    image, ref, spacing, _ = load_case(case, _ArrayCache())
    dice_after = {}
    for value in values:
        method = MIDeepSegMethod(dim, conf={**(conf or {}), key: value}, options=options)
        try:
            dice_after[value] = np.asarray(run_protocol(method, image, ref, spacing, clicks).dice)
        finally:
            method.close()
    print({k: [round(d, 3) for d in v] for k, v in dice_after.items()})
    return dice_after


def test_claims_keep_a_foreground_click_from_leaking_across_a_background_click(shared_data):
    """The 2D default's claims (``--conf claims all``: an added voxel must be nearer to a
    foreground seed than to every background one) on the unseen CT stomach slice of the dev
    set (``scripts/benchmark_clicks.py --preset shared``), 3 robot clicks, without the depth
    limit of session 18 (``reach_limit 0``, the 2D default when the claims were chosen), which
    bounds the same leak. Measured with the shipped weights (session 19's refinement) and the
    contest of session 20: the first click, a background click, takes a leak away; without
    claims (``claims none``) the second, a foreground click, adds back a leak across it and Dice
    falls 0.894 -> 0.815 (0.822 with session 19's ``contest proposal``); with claims it rises
    0.899 -> 0.920 (0.923) and no click lowers it. Were the claims a no-op, both runs would fall
    alike. (Session 18's weights showed it on the spleen's 10th click, a background click cutting
    into the spleen; with session 19's weights that click no longer does, claims or not.)"""
    dice_after = _dice_per_setting(2, "CT organs 2D", "stomach", "claims", ("all", "none"), 3, conf={"reach_limit": "0"})
    assert np.diff(dice_after["all"]).min() >= -0.01, dice_after["all"]
    assert np.diff(dice_after["none"]).min() < -0.05, dice_after["none"]
    assert dice_after["all"][2] > dice_after["none"][2] + 0.05, dice_after


def test_the_depth_limit_keeps_clicks_to_their_error_region(shared_data):
    """The 2D default's depth limit (``--conf reach_limit 1``: a click's changes connected to
    it and no deeper in the previous mask than the click itself) on the unseen right lateral
    ventricle of the 2D dev set, 20 robot clicks. Measured with the shipped weights (session 19's
    refinement) and the contest of session 20: with it no click lowers Dice by more than 0.011
    and the session ends at 0.912; without it (``0``, the default before session 18) a click
    lowers it by 0.046 and it ends at 0.910. Earlier: with session 19's ``contest proposal``
    0.007 and 0.930 with it, 2 clicks by more than 0.01 (up to 0.041) and 0.925 without; with
    session 18's weights 0.008 and 0.919 with it, 4 clicks (up to 0.040) without: a foreground
    click that gives back what the last background click removed, answers 20-40 pixels wide to
    errors of a few."""
    dice_after = _dice_per_setting(2, "brain structures 2D", "right lateral ventricle", "reach_limit", ("1", "0"), 20)
    assert np.diff(dice_after["1"]).min() >= -0.015, dice_after["1"]  # 0.011 measured: room for float32-only CPUs
    assert np.diff(dice_after["0"]).min() < -0.03, dice_after["0"]
    assert dice_after["1"][-1] >= 0.90, dice_after["1"]


def test_merged_parents_keep_a_foreground_click_from_undoing_a_background_click(shared_data):
    """The 3D default's merged parents (``--conf previous merged``) on the unseen CT stomach of
    the 3D dev set (``scripts/benchmark_clicks.py --preset shared --dims 3``), 4 robot clicks
    (background, background, foreground, foreground). Measured with the shipped weights: with
    ``diagonal`` the 4th click, in the stomach's gas, gives back 1,577 of the voxels the
    background clicks had removed and Dice falls 0.801 -> 0.737; with ``merged`` it rises
    0.785 -> 0.793. Were the option a no-op, both runs would fall alike. Run with the 3D default
    of sessions 11-15 (the paper's graph cut, lamda 5 / sigma 0.1, and radius limit 3), on which
    this case gives the robot that order of clicks; with session 16's lamda 20 / sigma 0.03 the
    first background click already removes the stomach's leak and the robot's next clicks are all
    foreground, and with radius limit 5 the third click lowers both runs alike. With contest
    "nearest" (the default since session 20) no state refines a parent with clicks of both kinds,
    so the test pins ``contest proposal``."""
    paper_cut = {"lamda": 5.0, "sigma": 0.1}
    dice_after = _dice_per_setting(3, "CT organs 3D", "stomach", "previous", ("merged", "diagonal"), 4, paper_cut,
                                   {"radius_limit": "3", "contest": "proposal"})
    assert dice_after["merged"][4] >= dice_after["merged"][3] - 0.01, dice_after["merged"]
    assert dice_after["diagonal"][4] < dice_after["diagonal"][3] - 0.03, dice_after["diagonal"]
    assert dice_after["merged"][4] > dice_after["diagonal"][4] + 0.03, dice_after


def test_contested_voxels_go_to_the_nearer_of_the_two_last_clicks(shared_data):
    """The default since session 20 (``--conf contest nearest``): a state with clicks of both
    kinds decides the voxels its last foreground click added and its last background click
    removed, each without the other, by which of the two is nearer, instead of by a proposal
    that refines a mask holding neither. On the unseen 3D liver of the dev set, 10 robot
    clicks of both kinds, measured with the shipped weights: with ``proposal`` (the default
    before) the 7th and the 10th click, both background clicks, lower Dice by 0.042 and 0.048
    (0.906 -> 0.864, 0.901 -> 0.853; session 18 found the 7th removing voxels up to 110 mm away);
    with ``nearest`` no click lowers it by more than 0.008 and the session ends at 0.915 against
    0.853. Were the option a no-op, both runs would be the same. Measured with a click's voxel as
    its seed (``seed_radius 0``, the 3D default before session 22); with the seed ball of session
    22 the two contests end at 0.915 and 0.908."""
    dice_after = _dice_per_setting(3, "CT organs 3D", "liver", "contest", ("nearest", "proposal"), 10,
                                   conf={"seed_radius": "0"})
    assert np.diff(dice_after["nearest"]).min() >= -0.015, dice_after["nearest"]  # 0.008 measured
    assert np.diff(dice_after["proposal"]).min() < -0.03, dice_after["proposal"]
    assert dice_after["nearest"][-1] > dice_after["proposal"][-1] + 0.03, dice_after


def test_a_band_click_reaches_along_the_boundary(shared_data):
    """``--conf spatial_term band`` (selectable, not a default; docs/experiments.md, "A click's reach along
    the boundary"): a click's spatial term is its depth difference plus its distance over
    ``band_reach``, so a background click in a shell of wrongly included voxels takes away
    more of the shell along the boundary than the 3D default's Euclidean term lets it. On the
    unseen brain stem of the 3D dev set, three background clicks, measured with the shipped
    weights: 0.838 -> 0.866 with ``band`` (band reach 2) against 0.838 -> 0.841 with the
    Euclidean term, both with a click's voxel as its seed (``seed_radius 0``, the 3D default
    before session 22; with the seed ball of session 22 the Euclidean term reaches 0.857 there).
    Were the option a no-op, both runs would be the same."""
    dice_after = _dice_per_setting(3, "brain structures 3D", "brain stem", "spatial_term", ("band", "euclidean"), 3,
                                   conf={"band_reach": "2", "seed_radius": "0"})
    assert dice_after["band"][3] > dice_after["euclidean"][3] + 0.015, dice_after
    assert dice_after["band"][3] > dice_after["band"][0] + 0.02, dice_after


def test_a_click_seeds_the_ball_it_sits_in_the_middle_of(shared_data):
    """The 3D default since session 22 (``seed_radius 0.9``, ``seed_limit 2``; docs/experiments.md, "A click
    seeds a ball"): a refinement click's hard seed in the graph cut is the ball of 0.9 times its
    depth around it, at most 2 work voxels. On the unseen right hippocampus of the 3D dev set,
    the robot's second to fourth clicks (background clicks in a leak) leave the mask as it was
    with the click's voxel alone as its seed (``seed_radius 0``, the default before: Dice 0.763
    after each): the fused probability gives way only in a small ball around each click and the
    graph cut closes it. With the ball, measured with the shipped weights: 0.763 -> 0.772 ->
    0.775 -> 0.782."""
    dice_after = _dice_per_setting(3, "brain structures 3D", "right hippocampus", "seed_radius", ("0.9", "0"), 4)
    assert abs(dice_after["0"][4] - dice_after["0"][1]) < 0.003, dice_after  # the do-nothing baseline
    assert dice_after["0.9"][4] - dice_after["0.9"][1] > 0.012, dice_after
    assert dice_after["0.9"][4] > dice_after["0"][4] + 0.01, dice_after
