#!/usr/bin/env python
"""Wall time of the core MIDeepSeg steps on typical sizes.

Times (median over ``--repeats`` runs, after one warm-up run):

* EGD (``exponentialized_geodesic_distance``) from the margin points,
* graph cut (``graph_cut`` with the default lamda/sigma/connectivity) on a noisy probability,
* fusion (``fuse_probability`` from precomputed geodesic distances, and the
  ``click_distances`` + ``fuse_probability`` step a refinement click triggers),
* an anti-aliased shrink to half the size per axis (``crop_and_resize``), beside MONAI's
  ``Resize(anti_aliasing=True)`` that it matches,

on a 512x512 slice (a real HC18 ultrasound image cropped/resized, synthetic if the data is
absent) and on a 96x96x64 crop (a real BraTS T1c crop around the tumour core, synthetic if
absent). Data are read from ``../shared/data`` next to the repository unless ``--data``
says otherwise. Prints a table; asserts nothing.

Usage: ``.venv/bin/python scripts/benchmark_core.py [--repeats 5] [--data DIR]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.transforms import Resize
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.networks import DEFAULT_SPATIAL_SIZE, midepseg_unet, native_bfloat16, predict_probability  # noqa: E402
from lib.transforms.crop import crop_and_resize, relaxed_box  # noqa: E402
from lib.transforms.egd import exponentialized_geodesic_distance  # noqa: E402
from lib.transforms.fusion import click_distances, fuse_probability  # noqa: E402
from lib.transforms.graph_cut import graph_cut  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402

log = logging.getLogger("benchmark_core")


def _synthetic(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image of an ellipsoid filling about half of each axis, and its mask."""
    rng = np.random.RandomState(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    mask = sum((g / 0.5) ** 2 for g in grids) <= 1.0
    image = np.where(mask, 0.7, 0.3) + 0.1 * rng.randn(*shape)
    return image.astype(np.float32), mask.astype(np.uint8)


def load_2d(data: Path, size: int = 512) -> tuple[np.ndarray, np.ndarray, str]:
    """A ``size`` x ``size`` HC18 slice (last validation image, relaxed box of the head,
    resized) and its label; synthetic when the data is absent."""
    images, labels = data / "hc18" / "images", data / "hc18" / "labels"
    files = sorted(images.glob("*.png")) if images.is_dir() else []
    files = [p for p in files if (labels / p.name).exists()]
    if not files:
        log.warning("HC18 not found under %s: using a synthetic 2D image", data)
        img, mask = _synthetic((size, size))
        return img, mask, "synthetic"
    from PIL import Image

    path = files[-1]
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    label = (np.asarray(Image.open(labels / path.name)) > 0).astype(np.float32)
    box = relaxed_box(extreme_margin_points(label), label.shape)
    img = crop_and_resize(image[None], box, (size, size))[0]
    lab = (crop_and_resize(label[None], box, (size, size))[0] > 0.5).astype(np.uint8)
    return img, lab, f"HC18 {path.name}"


def load_3d(data: Path, size: tuple[int, int, int] = (96, 96, 64)) -> tuple[np.ndarray, np.ndarray, str]:
    """A ``size`` crop of a BraTS T1c volume centred on the tumour core; synthetic when absent."""
    cases = sorted((data / "brats").glob("*/T1c_subtrMeanDivStd.nii.gz")) if (data / "brats").is_dir() else []
    if not cases:
        log.warning("BraTS not found under %s: using a synthetic 3D image", data)
        img, mask = _synthetic(size)
        return img, mask, "synthetic"
    import nibabel as nib

    path = cases[0]
    image = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(path.parent / "OTMultiClass.nii.gz")).dataobj)
    core = np.isin(seg, (1, 3, 4))
    centre = np.round(ndimage.center_of_mass(core)).astype(int) if core.any() else np.array(image.shape) // 2
    start = np.clip(centre - np.array(size) // 2, 0, np.array(image.shape) - size)
    sl = tuple(slice(a, a + s) for a, s in zip(start, size))
    return image[sl], core[sl].astype(np.uint8), f"BraTS {path.parent.name} T1c"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (imports, allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(name: str, image: np.ndarray, label: np.ndarray, repeats: int) -> list[tuple[str, str, float]]:
    rng = np.random.RandomState(0)
    margin = extreme_margin_points(label) if label.any() else np.array([np.array(label.shape) // 2])
    # a plausible CNN output: smoothed label plus noise, and one click of each kind
    prob = np.clip(ndimage.gaussian_filter(label.astype(np.float32), 2.0) + 0.15 * rng.randn(*label.shape), 0.01, 0.99)
    inside = np.argwhere(ndimage.binary_erosion(label, iterations=2))
    outside = np.argwhere(label == 0)
    fg = inside[len(inside) // 2][None] if len(inside) else margin[:0]
    bg = outside[len(outside) // 3][None]
    d_fg, d_bg = click_distances(image, fg, bg, margin=margin)
    whole = np.array([np.zeros(image.ndim, dtype=np.int64), np.array(image.shape)])
    half = tuple(max(1, n // 2) for n in image.shape)
    linear = "bilinear" if image.ndim == 2 else "trilinear"
    rows = [
        ("EGD (margin points)", lambda: exponentialized_geodesic_distance(image, margin)),
        ("graph cut (defaults)", lambda: graph_cut(image, prob, np.concatenate([margin, fg]), bg)),
        ("fusion (Eq. 3-7 only)", lambda: fuse_probability(prob, d_fg, d_bg)),
        ("fusion incl. distances", lambda: fuse_probability(prob, *click_distances(image, fg, bg, margin=margin))),
        ("shrink x1/2 (crop_and_resize)", lambda: crop_and_resize(image[None], whole, half)),
        ("shrink x1/2 (MONAI Resize)", lambda: Resize(half, mode=linear, anti_aliasing=True)(image[None].astype(np.float32))),
    ]
    rows += network_rows(image, margin)
    out = []
    for step, fn in rows:
        t = median_time(fn, repeats)
        log.info("%s %s: %.4f s", name, step, t)
        out.append((name, step, t))
    return out


def network_rows(image: np.ndarray, margin: np.ndarray) -> list[tuple[str, Callable[[], object]]]:
    """Forward passes of the shipped U-Net of the image's dimension on its network grid
    (crop of the margin points' box + EGD), in float32 and, on a CPU with native support,
    bfloat16."""
    dim = image.ndim
    weights = REPO / "apps" / "midepseg" / "model" / f"midepseg_{dim}d.pt"
    network = midepseg_unet(dim).eval()
    if weights.exists():
        network.load_state_dict(torch.load(weights, map_location="cpu")["model"])
    crop = crop_and_resize(image[None], relaxed_box(margin, image.shape), DEFAULT_SPATIAL_SIZE[dim])[0]
    cue = exponentialized_geodesic_distance(crop, np.array([np.array(crop.shape) // 2]))
    net_input = torch.as_tensor(np.stack([crop, cue]), dtype=torch.float32)[None]
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bfloat16() else [])
    return [
        (f"U-Net {'x'.join(map(str, crop.shape))} {str(dt).split('.')[-1]}", lambda dt=dt: predict_probability(network, net_input, dt))
        for dt in dtypes
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per step (median reported)")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="development data folder")
    parser.add_argument("--size-2d", type=int, default=512)
    parser.add_argument("--size-3d", type=int, nargs=3, default=(96, 96, 64))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    img2, lab2, src2 = load_2d(args.data, args.size_2d)
    img3, lab3, src3 = load_3d(args.data, tuple(args.size_3d))
    cases = [
        (f"2D {'x'.join(map(str, img2.shape))}", img2, lab2, src2),
        (f"3D {'x'.join(map(str, img3.shape))}", img3, lab3, src3),
    ]
    rows = []
    for name, img, lab, src in cases:
        log.info("%s from %s", name, src)
        rows += bench_case(name, img, lab, args.repeats)

    print(f"median wall time over {args.repeats} runs (after 1 warm-up)")
    for name, _, _, src in cases:
        print(f"  {name}: {src}")
    w = max(len(r[1]) for r in rows)
    print(f"{'size':<16} {'step':<{w}} {'median':>11}")
    for name, step, t in rows:
        print(f"{name:<16} {step:<{w}} {t * 1000:>8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
