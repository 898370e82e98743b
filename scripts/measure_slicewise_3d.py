#!/usr/bin/env python
"""Where the 3D stage 1 loses Dice: the 2D network slice by slice inside a 3D object (issue 13).

For each 3D case, with the deterministic margin points of the reference
(``extreme_margin_points``):

* ``3d``: the 3D task's stage 1 (the shipped default, ensemble at the image's resolution);
* ``2d from 3d``: the 2D task's stage 1 on every slice along ``--axis``, each slice prompted by
  the interior margin points of the 3D result's own cross-section (its in-plane extreme
  points, moved inwards as for any object), pasted into a volume;
* ``2d from reference``: the same with the reference's cross-sections as prompts (an oracle:
  an annotator who placed four margin points on every slice).

The first pair says whether the (stronger, class-agnostic) 2D network improves on the 3D
network's boundary when given only what the 3D result says about each slice; the oracle
says how much of the 3D loss is the slices' extents, which the six 3D margin points do not
tell. Slices whose prompt mask has fewer than ``--min-pixels`` pixels are left empty.

    .venv/bin/python scripts/measure_slicewise_3d.py --folder runs/data/select3d
    .venv/bin/python scripts/measure_slicewise_3d.py             # the 3D dev cases of evaluate_generalisation.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.transforms import LoadImage  # noqa: E402

from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from scripts.evaluate_generalisation import cases_3d, cases_folder, reference, stage1  # noqa: E402

logger = logging.getLogger("measure_slicewise_3d")
WAYS = ("3d", "2d from 3d", "2d from reference")


def slicewise(task_2d, image_path: str, prompts: np.ndarray, spacing: np.ndarray, axis: int, min_pixels: int) -> np.ndarray:
    """The 2D task's stage 1 on every slice of ``image_path`` along ``axis``, prompted by the
    interior margin points of ``prompts``' cross-section there (bool ``(H, W, D)``); bool volume."""
    out = np.zeros(prompts.shape, dtype=bool)
    plane = [a for a in range(3) if a != axis]
    for index in range(prompts.shape[axis]):
        section = np.take(prompts, index, axis=axis)
        if section.sum() < min_pixels:
            continue
        in_plane = extreme_margin_points(section, spacing[plane])
        points = np.zeros((len(in_plane), 3), dtype=np.int64)
        points[:, plane] = in_plane
        points[:, axis] = index
        where = [slice(None)] * 3
        where[axis] = index
        out[tuple(where)] = stage1(task_2d, image_path, points, slice_axis=axis)[tuple(where)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "apps" / "midepseg" / "model")
    parser.add_argument("--folder", type=Path, default=None, help="3D image/label pairs (default: the dev cases)")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis (the server's voxel order)")
    parser.add_argument("--min-pixels", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None, help="write the per-case rows here (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("monailabel", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tasks = {}
    for dim, config_class in ((2, MIDeepSeg2DConfig), (3, MIDeepSeg3DConfig)):
        config = config_class()
        config.init(f"midepseg_{dim}d", str(args.model_dir), {}, None)
        tasks[dim] = config.infer()
    loader = LoadImage(image_only=True)
    rows = []
    for case in cases_folder(args.folder) if args.folder else cases_3d():
        ref, spacing = reference(case, loader)
        start = time.perf_counter()
        result_3d = stage1(tasks[3], case["image"], extreme_margin_points(ref, spacing))
        masks = {
            "3d": result_3d,
            "2d from 3d": slicewise(tasks[2], case["image"], result_3d, spacing, args.axis, args.min_pixels),
            "2d from reference": slicewise(tasks[2], case["image"], ref, spacing, args.axis, args.min_pixels),
        }
        row = {"group": case["group"], "name": case.get("name"), **{way: round(dice(masks[way], ref), 4) for way in WAYS}}
        logger.info("%-28s %-28s %s (%.1f s)", row["group"], row["name"], {w: row[w] for w in WAYS}, time.perf_counter() - start)
        rows.append(row)
    groups = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    lines = [f"| group (n) | {' | '.join(WAYS)} |", "|---|" + "---|" * len(WAYS)]
    for group, items in [*groups.items(), ("all", rows)]:
        lines.append(f"| {group} ({len(items)}) | " + " | ".join(f"{np.mean([r[w] for r in items]):.3f}" for w in WAYS) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
