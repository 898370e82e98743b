"""What each robot click changes, per model folder: for the dev cases of ``benchmark_clicks.py
--preset shared`` whose data set or case name contains ``--case``, replay the robot (margin
points, then the centre of the largest error region) and print, per click, its kind, its depth
in the previous mask, the voxels it removed or added, how many of them lie in the reference,
how far the farthest lies from the click, the error region it points at (the connected
component of the previous mask's error of the click's kind that holds it) and the share of
that region it fixed, and the Dice before and after. Also the stage-1 network probability
(ensemble mean) inside and outside the reference.

Used to compare two networks on the same refinement settings (docs/experiments.md, "Session 24: a 3D
ensemble member that is better at stage 1"):

    python scripts/probe_clicks.py --dims 3 --case BraTS --clicks 1 \\
        --model-dir apps/midepseg/model --model-dir runs/wise07 [--conf temperature 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.benchmark.methods import MIDeepSegMethod  # noqa: E402
from lib.benchmark.metrics import pointed_error_region  # noqa: E402
from lib.benchmark.protocol import robot_click  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.transforms.crop import resample  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from lib.transforms.monotone_edits import boundary_depth  # noqa: E402
from scripts.benchmark_clicks import _ArrayCache, load_case, preset_shared_cases  # noqa: E402


def stage1_probability(data: dict, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stage-1 probability on the relaxed box at image resolution, inside and outside the
    reference (needs the 3D default's ``stage1_resolution image``, which keeps it)."""
    box, prob = data["stage1_network"]
    p = resample(np.asarray(prob), tuple(int(v) for v in box[1] - box[0]), "bilinear")[0]
    r = ref[tuple(slice(a, b) for a, b in zip(box[0], box[1]))]
    return p[r], p[~r]


def probe(method: MIDeepSegMethod, image, ref, spacing, clicks: int) -> None:
    margin = extreme_margin_points(ref, spacing)
    fg = bg = np.zeros((0, ref.ndim), np.int64)
    data = method.request_data(image, spacing, margin, fg, bg)
    mask = np.asarray(data["pred"]) > 0
    if data.get("stage1_network") is not None:
        inside, outside = stage1_probability(data, ref)
        print(f"  stage-1 probability inside the reference: median {np.median(inside):.2f}, 10th percentile "
              f"{np.percentile(inside, 10):.2f}; outside: mean {outside.mean():.2f}")
    for k in range(clicks):
        click = robot_click(mask, ref, spacing, np.concatenate([margin, fg, bg]))
        if click is None:
            break
        point, is_fg = click
        depth = float(boundary_depth(mask, point[None], spacing)[0])
        fg, bg = (np.r_[fg, point[None]], bg) if is_fg else (fg, np.r_[bg, point[None]])
        new = np.asarray(method.request_data(image, spacing, margin, fg, bg)["pred"]) > 0
        changed = new != mask
        region = pointed_error_region(mask, ref, point, is_fg)
        seed = np.ones(ref.shape, bool)
        seed[tuple(point)] = False
        far = float(ndimage.distance_transform_edt(seed, sampling=spacing)[changed].max()) if changed.any() else 0.0
        print(f"  click {k + 1} {'fg' if is_fg else 'bg'} at {point.tolist()} depth {depth:.1f} mm: "
              f"{'added' if is_fg else 'removed'} {int(changed.sum())}, {int((changed & ref).sum())} of them in the "
              f"reference, farthest {far:.1f} mm; fixed {int((changed & region).sum())} of the {int(region.sum())} "
              f"voxels of its error region; Dice {dice(mask, ref):.4f} -> {dice(new, ref):.4f}")
        mask = new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--case", required=True, help="substring of the data set or case name")
    parser.add_argument("--clicks", type=int, default=1)
    parser.add_argument("--model-dir", action="append", required=True, help="repeat to compare folders")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args(argv)
    cases = [c for c in preset_shared_cases([args.dims]) if args.case in c["dataset"] or args.case in c.get("name", "")]
    if not cases:
        parser.error(f"no dev case matches {args.case!r}")
    cache = _ArrayCache()
    for model_dir in args.model_dir:
        method = MIDeepSegMethod(args.dims, model_dir=model_dir, conf=dict(args.conf) or None)
        for case in cases:
            image, ref, spacing, _ = load_case(case, cache)
            print(f"{model_dir}: {case['dataset']} {case.get('name', '')}")
            probe(method, image, np.asarray(ref) > 0, spacing, args.clicks)
            method.end_case()
        method.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
