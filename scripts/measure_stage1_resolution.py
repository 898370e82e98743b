#!/usr/bin/env python
"""How finely the 3D stage-1 boundary follows the image on a large object (issue 13, item 4).

For each case, stage 1 (margin points only) of the shipped 3D model two ways
(``--conf stage1_resolution``):

* ``work``: the graph cut on the work grid (at most 48^3 voxels), linearly
  restored;
* ``image`` (the 3D default): that boundary placed again at the image's resolution by the same graph cut in
  a band one work voxel either side.

Printed per case and way: Dice to the reference mask, the distance (voxels) from each
boundary voxel of the result to the reference's boundary (median, p95, share within 2
voxels), and the seconds of the cut and restore (the network's output cached: a second
request with the task's lamda nudged by 0.002 %).

Cases: a synthetic ellipsoid (semi-axes 80, 66, 40 voxels, noise), and, with the
development data, the liver of the TotalSegmentator CT (the largest unseen organ).

    .venv/bin/python scripts/measure_stage1_resolution.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.midepseg import MIDeepSeg3DConfig  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
LIVER = 5  # TotalSegmentator v2 class
WAYS = ("work", "image")


def ellipsoid(folder: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """A bright noisy ellipsoid in a 200 x 170 x 110 volume (1 mm): image file, mask, spacing."""
    import nibabel as nib

    shape = (200, 170, 110)
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = (grid[0] / 80.3) ** 2 + (grid[1] / 65.7) ** 2 + (grid[2] / 40.2) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * 100 + rng.normal(0, 10, shape).astype(np.float32)
    path = folder / "ellipsoid.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    return str(path), mask, np.ones(3)


def liver() -> tuple[str, np.ndarray, np.ndarray] | None:
    from monai.transforms import LoadImage

    image, labels = DATA / "totalseg_ct" / "ct.nii.gz", DATA / "totalseg_ct" / "labels.nii.gz"
    if not (image.is_file() and labels.is_file()):
        return None
    label = LoadImage(image_only=True)(str(labels))
    return str(image), np.asarray(label) == LIVER, np.asarray(label.pixdim)[:3]


def boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def distances_to(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance (voxels) from each boundary voxel of ``mask`` to the boundary of ``reference``."""
    return ndimage.distance_transform_edt(~boundary(reference))[boundary(mask)]


def stage1(way: str, image: str, points: np.ndarray) -> tuple[np.ndarray, float]:
    import nibabel as nib

    config = MIDeepSeg3DConfig()
    config.init("midepseg_3d", str(ROOT / "apps" / "midepseg" / "model"), {"stage1_resolution": way}, None)
    task = config.infer()
    task({"image": image, "foreground": points.tolist(), "result_extension": ".nii.gz"})  # load, network (cached)
    # timed: the same points with the task's lamda nudged, so the cut and the restore run again, the network not
    lamda = float(task.config()["lamda"]) * 1.00002
    start = time.perf_counter()
    path, _ = task({"image": image, "foreground": points.tolist(), "result_extension": ".nii.gz", "lamda": lamda})
    seconds = time.perf_counter() - start
    mask = np.asarray(nib.load(path).dataobj) > 0
    os.unlink(path)
    return mask, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("monailabel").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"synthetic ellipsoid": ellipsoid(Path(tmp))}
        if (found := liver()) is not None:
            cases["CT liver"] = found
        print("| case | way | Dice | boundary to reference: median / p95 (voxels) | within 2 voxels | "
              "seconds (stage-1 cut and restore, network cached) |")
        print("|---|---|---|---|---|---|")
        for name, (image, reference, spacing) in cases.items():
            points = extreme_margin_points(reference, spacing)
            for way in WAYS:
                mask, seconds = stage1(way, image, points)
                to_ref = distances_to(mask, reference)
                print(f"| {name} | {way} | {dice(mask, reference):.4f} | {np.median(to_ref):.2f} / "
                      f"{np.percentile(to_ref, 95):.2f} | {np.mean(to_ref <= 2):.3f} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
