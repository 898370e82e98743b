"""3D stage 1 at the image's resolution (``--conf stage1_resolution image``) on a box far
larger than the 48^3 work grid: the boundary follows the object more closely than the
work grid's restored one, and refinement clicks on top stay monotone with exact undo."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import APP_MODELS, dice_np, load_script

pytestmark = pytest.mark.skipif(not (APP_MODELS / "midepseg_3d.pt").is_file(), reason="shipped 3D weights missing")


def _task(way: str, ensemble: bool = False):
    from configs.midepseg import MIDeepSeg3DConfig

    config = MIDeepSeg3DConfig()
    conf = {"stage1_resolution": way} if ensemble else {"stage1_resolution": way, "stage1_ensemble": "none"}
    config.init("midepseg_3d", str(APP_MODELS), conf, None)
    return config.infer()


def _mask(task, image: str, foreground, background=(), **extra) -> np.ndarray:
    """The task's mask; ``extra``: further request parameters (e.g. ``lamda``)."""
    _, data = task({"image": image, "foreground": np.asarray(foreground).tolist(),
                    "background": np.asarray(background, dtype=np.int64).reshape(-1, 3).tolist(),
                    "skip_writer": True, "logging": "WARNING", **extra})
    return np.asarray(data["pred"]) > 0


def test_large_3d_boundary_at_image_resolution_and_monotone_clicks(tmp_path):
    from lib.transforms.margin_points import extreme_margin_points
    from lib.transforms.robot_user import corrective_click

    measure = load_script("measure_stage1_resolution")
    image, truth, spacing = measure.ellipsoid(tmp_path)  # 200 x 170 x 110, box ~ 9x the work grid
    margin = extreme_margin_points(truth)
    tasks = {way: _task(way) for way in ("work", "image")}
    masks = {way: _mask(task, image, margin) for way, task in tasks.items()}
    close = {way: float(np.mean(measure.distances_to(m, truth) <= 1)) for way, m in masks.items()}
    dices = {way: dice_np(m, truth) for way, m in masks.items()}
    print(f"\nboundary voxels within 1 voxel of the surface: {close}; Dice {dices}")
    # measured: work 0.71 / Dice 0.975, image 0.98 / Dice 0.991
    assert close["image"] > close["work"] + 0.15
    assert dices["image"] > dices["work"] + 0.01

    task, fg, bg = tasks["image"], [p for p in margin], []
    states = [(list(fg), list(bg), masks["image"])]  # the point lists and the mask after each request
    for _ in range(4):
        click = corrective_click(states[-1][2], truth, spacing, np.array(fg + bg))
        if click is None:
            break
        point, is_fg = click
        (fg if is_fg else bg).append(point)
        mask, previous = _mask(task, image, fg, bg), states[-1][2]
        if is_fg:
            assert not np.any(previous & ~mask), "a foreground click removed voxels"
        else:
            assert not np.any(mask & ~previous), "a background click added voxels"
        assert not np.array_equal(mask, previous), "the click changed nothing"
        states.append((list(fg), list(bg), mask))
    assert len(states) > 2, "the robot found too little to click"
    fg_before, bg_before, before = states[-2]  # undo = the request without the last point
    np.testing.assert_array_equal(_mask(task, image, fg_before, bg_before), before)


def test_clicks_correct_the_boundary_at_image_resolution(tmp_path):
    """With stage 1 at the image's resolution the refinement's ``M(0, 0)`` is the fine mask
    on the work grid (not the work grid's own cut), and robot clicks move the fine boundary:
    ellipsoid, default stage-1 ensemble, 5 clicks, measured Dice 0.9659 -> 0.9704 (+0.0045),
    against +0.0000 for a refinement that changes nothing but the clicked voxels. (The gain
    alone does not tell the two ``M(0, 0)`` apart since the band takes the mean with the work
    grid's cut: +0.0043 with the work grid's own cut; the first assertion does.) Run with the
    paper's graph cut (lamda 5, sigma 0.1): with the 3D default's lamda 20 / sigma 0.03 stage 1
    reaches 0.972 on the ellipsoid, its errors are a shell about a voxel thick, and 5 clicks
    gain +0.0001 there (docs/experiments.md, "Graph-cut contrast in 3D")."""
    from lib.transforms.crop import resample
    from lib.transforms.margin_points import extreme_margin_points
    from lib.transforms.robot_user import corrective_click

    image, truth, spacing = load_script("measure_stage1_resolution").ellipsoid(tmp_path)
    task = _task("image", ensemble=True)
    paper_cut = {"lamda": 5.0, "sigma": 0.1}
    fg, bg = [p for p in extreme_margin_points(truth)], []
    _, data = task({"image": image, "foreground": np.asarray(fg).tolist(), "background": [], "skip_writer": True,
                    "logging": "WARNING", **paper_cut})
    fine = np.asarray(data["stage1_image_mask"], dtype=np.float32)[None]
    np.testing.assert_array_equal(data["stage1_work_mask"], resample(fine, data["work_image"].shape[1:])[0] >= 0.5)
    stage1 = mask = np.asarray(data["pred"]) > 0
    for _ in range(5):
        point, is_fg = corrective_click(mask, truth, spacing, np.array(fg + bg))
        (fg if is_fg else bg).append(point)
        mask = _mask(task, image, fg, bg, **paper_cut)
    nothing = stage1.copy()  # stage 1 with the clicked voxels set, and nothing else
    for points, value in ((fg, True), (bg, False)):
        if points:
            nothing[tuple(np.asarray(points).T)] = value
    gains = {name: dice_np(m, truth) - dice_np(stage1, truth) for name, m in (("refined", mask), ("nothing", nothing))}
    print(f"\nDice gain after 5 clicks: {gains}")
    assert gains["refined"] > gains["nothing"] + 0.003


def test_near_is_the_distance_to_the_mask_in_physical_units():
    from lib.infers.midepseg_infer import near

    mask = np.zeros((30, 30, 10), dtype=bool)
    mask[15, 15, 5] = True
    out = near(mask, 2.0, (1.0, 1.0, 2.0))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1)
    dist = np.sqrt((((grid - [15, 15, 5]) * [1.0, 1.0, 2.0]) ** 2).sum(-1))
    np.testing.assert_array_equal(out, dist <= 2.0)
    assert out[15, 15, 4] and out[15, 15, 6] and not out[15, 15, 7] and out[13, 15, 5] and not out[12, 15, 5]


def test_the_3d_default_cut_follows_weak_organ_edges():
    """The 3D default refinement cuts with lamda 20 / sigma 0.03 (``GRAPH_CUT_DEFAULTS``, chosen on
    the 3D selection set); the paper's IF-GC, its reference, keeps the paper's 5 / 0.1, as does 2D.
    On the unseen CT liver (the largest dev organ, whose edges to its neighbours are a few
    hundredths of the [0, 1] range) stage 1 measured 0.775 with the default's cut and 0.610 with
    the paper's, on the same network output."""
    from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig
    from lib.transforms.margin_points import extreme_margin_points

    def defaults(config_class, conf):
        config = config_class()
        config.init("m", str(APP_MODELS), conf, None)
        task_config = config.infer().config()
        return task_config["lamda"], task_config["sigma"]

    assert defaults(MIDeepSeg3DConfig, {}) == (20.0, 0.03)
    assert defaults(MIDeepSeg3DConfig, {"refinement": "ifgc"}) == (5.0, 0.1)
    assert defaults(MIDeepSeg3DConfig, {"refinement": "learned"}) == (5.0, 0.1)
    assert defaults(MIDeepSeg2DConfig, {}) == (5.0, 0.1)

    found = load_script("measure_stage1_resolution").liver()
    if found is None:
        pytest.skip("../shared/data/totalseg_ct missing")
    image, truth, spacing = found
    task = _task("image", ensemble=True)
    points = extreme_margin_points(truth, spacing)
    default = dice_np(_mask(task, image, points), truth)
    paper = dice_np(_mask(task, image, points, lamda=5.0, sigma=0.1), truth)
    print(f"\nCT liver stage 1: default cut {default:.3f}, paper's cut {paper:.3f}")
    assert default > paper + 0.1


def test_the_3d_ensemble_computes_one_cue_map(tmp_path, monkeypatch):
    """The 3D default averages two networks on different grids (96 x 96 x 64 and the
    class-agnostic member's 64 x 64 x 48), each with the EGD of the margin points on its own
    grid. With ``--conf shared_cue true`` (not a default) the EGD is computed once, on the
    smaller grid, and resampled for the other network. The stage-1 answer stays the same
    object (docs/experiments.md, "One cue for the 3D ensemble": selection-set stage-1 Dice 0.780 -> 0.779)."""
    import lib.transforms.cues as cues
    from lib.transforms.margin_points import extreme_margin_points

    measure = load_script("measure_stage1_resolution")
    image, truth, _ = measure.ellipsoid(tmp_path)
    margin = extreme_margin_points(truth)
    calls = []
    original = cues.cue_map

    def counted(image, points, encoding="egd"):
        calls.append(np.shape(image))
        return original(image, points, encoding)

    monkeypatch.setattr(cues, "cue_map", counted)
    masks, counts = {}, {}
    for shared in ("true", "false"):
        from configs.midepseg import MIDeepSeg3DConfig

        config = MIDeepSeg3DConfig()
        config.init("midepseg_3d", str(APP_MODELS), {"shared_cue": shared}, None)
        task = config.infer()
        assert len(task._ensemble) == 1, "the 3D default is a two-network ensemble"
        calls.clear()
        masks[shared] = _mask(task, image, margin)
        counts[shared] = list(calls)
    print(f"\ncue maps computed: {counts}; Dice shared/own {dice_np(masks['true'], masks['false']):.4f}")
    assert counts["false"] == [(96, 96, 64), (64, 64, 48)]
    assert counts["true"] == [(64, 64, 48)]
    assert dice_np(masks["true"], masks["false"]) > 0.98
    assert dice_np(masks["true"], truth) > 0.95
