"""Why corrective clicks barely move the mask: per robot click of the paper's IF-GC
(``--conf refinement ifgc``), on the work grid of the relaxed box, measure

* the error region the click was placed in (voxels of the connected error region);
* the click's reach: voxels where its own ``alpha`` (Eq. 7, ``exp(-D)`` of its distance
  map) exceeds 0.5, and the share of the error region inside that reach;
* the share of the error region the fusion flips (``R > 0.5`` against ``P > 0.5``), and the
  share the graph cut finally fixes (the result against the previous result);
* whether the click lies outside the relaxed box (it then only changes its own voxel), and
  the work grid's shrink factor.

Prints medians per data set (the unseen 2D dev sets of ``benchmark_clicks.py --preset
shared``, or ``--dims 3``).

    python scripts/diagnose_clicks.py --dims 2 --max-cases 5 --clicks 10
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.benchmark.methods import MIDeepSegMethod  # noqa: E402
from lib.benchmark.protocol import robot_click  # noqa: E402
from lib.transforms.crop import crop_and_resize  # noqa: E402
from lib.transforms.fusion import click_distance, fuse_probability  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from scripts.benchmark_clicks import _ArrayCache, load_case, preset_shared_cases, select_cases  # noqa: E402


def diagnose(method: MIDeepSegMethod, image, ref, spacing, clicks: int) -> list[dict]:
    margin = extreme_margin_points(ref, spacing)
    fg, bg = np.zeros((0, ref.ndim), np.int64), np.zeros((0, ref.ndim), np.int64)
    request = dict(image=image, spacing=spacing, margin_points=margin)
    rows = []
    mask = method.segment(image, spacing, margin, fg, bg)
    for _ in range(clicks):
        click = robot_click(mask, ref, spacing, np.concatenate([margin, fg, bg]))
        if click is None:
            break
        point, is_fg = click
        fg, bg = (np.r_[fg, point[None]], bg) if is_fg else (fg, np.r_[bg, point[None]])
        data = method.request_data(**request, foreground=fg, background=bg)
        cnn = method.task._stage1_cache.get(data["stage1_key"])[0][0]  # the stage-1 P on the work grid
        fused = fuse_probability(cnn, data["distance_fg"], data["distance_bg"])
        box, size, work = data["work_box"], data["work_image"].shape[1:], data["work_image"][0]
        inside = bool(np.all((point >= box[0]) & (point < box[1])))
        new = np.asarray(data["pred"])
        row = {"outside_box": not inside, "shrink": float(np.prod(box[1] - box[0]) / np.prod(size))}
        if inside:
            prev_w = crop_and_resize(mask[None].astype(np.float32), box, size, "nearest")[0] > 0.5
            ref_w = crop_and_resize(ref[None].astype(np.float32), box, size, "nearest")[0] > 0.5
            new_w = crop_and_resize(new[None].astype(np.float32), box, size, "nearest")[0] > 0.5
            wp = data[("fg_clicks_work" if is_fg else "bg_clicks_work")][-1]
            labels, _ = ndimage.label(prev_w != ref_w)
            region = labels == labels[tuple(wp)] if labels[tuple(wp)] else np.zeros(size, bool)
            alpha = np.exp(-click_distance(work, wp[None], data["work_spacing"]))
            fused, cnn = fused > 0.5, cnn > 0.5
            n = max(int(region.sum()), 1)
            row.update(region=int(region.sum()), reach=int((alpha > 0.5).sum()),
                       reach_share=float((region & (alpha > 0.5)).sum() / n),
                       fused_share=float((region & (fused != cnn)).sum() / n),
                       fixed_share=float((region & (new_w == ref_w)).sum() / n))
        rows.append(row)
        mask = new
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--max-cases", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args(argv)
    cases = [c for c in select_cases(preset_shared_cases([args.dims]), args.max_cases) if "HC18" not in c["dataset"]]
    method = MIDeepSegMethod(args.dims, "ifgc")
    cache = _ArrayCache()
    by = defaultdict(list)
    for case in cases:
        image, ref, spacing, _ = load_case(case, cache)
        by[case["dataset"]] += diagnose(method, image, ref, spacing, args.clicks)
        method.end_case()
    print("| data set | clicks | outside box | work-grid shrink | error region (voxels) | reach alpha>0.5 (voxels) | "
          "region in reach | region flipped by fusion | region fixed after graph cut |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset, rows in by.items():
        ins = [r for r in rows if not r["outside_box"]]

        def med(k):
            return float(np.median([r[k] for r in ins])) if ins else float("nan")

        print(f"| {dataset} | {len(rows)} | {sum(r['outside_box'] for r in rows)} | {np.median([r['shrink'] for r in rows]):.1f} | "
              f"{med('region'):.0f} | {med('reach'):.0f} | {100 * med('reach_share'):.0f} % | "
              f"{100 * med('fused_share'):.0f} % | {100 * med('fixed_share'):.0f} % |")
    method.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
