"""Class-agnostic training objects from the newer folders of ../shared/data (issue 13), so
that stage 1 learns "the object inside these margin points" rather than one anatomy.

Writes NIfTI image/label pairs under ``--out``/images and ``--out``/labels; the file name's
part before the first ``_`` names the group that a validation split must keep together
(one volume, one photograph, one label map, one pasted shape):

* ``la-<case>``: left-atrium LGE-MRI, every volume but the first ``HELD_OUT_LA`` (sorted), which
  stay out as held-out subjects (2D: ``--slices`` axial slices over the atrium's extent);
* ``ph2-<image>`` (2D): dermoscopy lesions as luminance, all but the first ``HELD_OUT_PH2``;
* ``em-<image>`` (2D): EM cells, each a connected region between membranes, not touching the
  image border, all but the first ``HELD_OUT_EM`` sections;
* ``syn-<map>``: SynthSeg-style synthetic images drawn from the label maps (a random
  intensity and noise level per label, blur, a smooth multiplicative bias field, noise); the
  objects are single structures, never a structure the generalisation check reports as
  unseen (``BRAIN_STRUCTURES``, nor their mirror twins), which stay in the picture as context;
* ``shape-<n>``: random smooth blobs pasted on real backgrounds (HC18, fundus luminance, EM,
  the brain MRI; in 3D the left-atrium MRI and the brain MRI) with a random contrast,
  texture and edge blur.

Held out as whole *types* (never written): spinal-cord MR, spleen CT, SEM axons, retinal
vessels (thin: see the README), and every object of the generalisation check.

    .venv/bin/python scripts/prepare_generic_objects.py --dim 2 --out runs/data/generic2d
    .venv/bin/python scripts/prepare_generic_objects.py --dim 3 --out runs/data/generic3d
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.evaluate_generalisation import BRAIN_STRUCTURES, DATA  # noqa: E402
from scripts.make_selection_set import LA_CASES, PH2_CASES, read_png  # noqa: E402
from scripts.prepare_anatomy import MIRRORS_OF_UNSEEN, context_box, largest_component, write_pair  # noqa: E402

logger = logging.getLogger("prepare_generic_objects")
# The first volumes / images, held out here, are the selection set's (make_selection_set.py).
HELD_OUT_LA = LA_CASES
HELD_OUT_PH2 = PH2_CASES
HELD_OUT_EM = 2
UNSEEN_LABELS = set(BRAIN_STRUCTURES) | set(MIRRORS_OF_UNSEEN)
# FreeSurfer labels that are not one object: background, unknown, CSF, vessel, choroid plexus.
NOT_OBJECTS = {0, 24, 30, 31, 62, 63, 77, 85}
Pair = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, image, label, affine


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    nii = nib.load(str(path))
    return np.asarray(nii.dataobj, dtype=np.float32), nii.affine


def crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    moved = affine.copy()
    moved[:3, 3] = affine[:3, :3] @ [s.start for s in box] + affine[:3, 3]
    return moved


def spread_slices(mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` axial indices evenly inside the mask's extent along the last axis."""
    z_any = np.flatnonzero(mask.any(axis=(0, 1)))
    return np.unique(np.linspace(z_any[0], z_any[-1], count + 2)[1:-1].round().astype(int))


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """A smooth multiplicative field: exp of a 4^d Gaussian grid upsampled cubically."""
    coarse = rng.normal(0.0, strength, size=(4,) * len(shape))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest")
    pad = [(0, max(0, s - f)) for s, f in zip(shape, field.shape)]
    field = np.pad(field, pad, mode="edge")[tuple(slice(0, s) for s in shape)]
    return np.exp(field)


def synthetic_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SynthSeg-style image of a label map: per label a random mean (0-255) and noise level,
    Gaussian blur, a bias field and global noise; float32, same shape as ``labels``."""
    values, index = np.unique(labels, return_inverse=True)
    means = rng.uniform(0.0, 255.0, size=values.size)
    stds = rng.uniform(1.0, 20.0, size=values.size)
    index = index.reshape(labels.shape)
    image = means[index] + rng.standard_normal(labels.shape) * stds[index]
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.3, 1.5))
    image = image * bias_field(labels.shape, rng) + rng.normal(0.0, rng.uniform(0.5, 8.0), size=labels.shape)
    return image.astype(np.float32)


def random_blob(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A smooth random object: thresholded smoothed noise, its largest component, holes filled."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=min(shape) * rng.uniform(0.08, 0.2))
    centre = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")) ** 2
    score = noise / noise.std() - 2.5 * centre.sum(0)  # keeps the blob away from the border
    blob = largest_component(score > np.quantile(score, rng.uniform(0.75, 0.93)))
    return ndimage.binary_fill_holes(blob)


def paste(background: np.ndarray, blob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The blob drawn into ``background`` with a random contrast (darker or brighter), a
    texture of its own and a blurred edge."""
    spread = float(background.std()) or 1.0
    inside = background * rng.uniform(0.3, 1.2) + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.5) * spread
    inside = inside + ndimage.gaussian_filter(rng.standard_normal(blob.shape), rng.uniform(0.5, 2.0)) * spread * rng.uniform(0, 0.6)
    weight = ndimage.gaussian_filter(blob.astype(np.float32), rng.uniform(0.3, 1.5))
    return (background * (1 - weight) + inside * weight).astype(np.float32)


def left_atrium(dim: int, slices: int) -> Iterator[Pair]:
    for case in sorted((DATA / "la_mri").iterdir())[HELD_OUT_LA:]:
        image, affine = read_nifti(case / "image.nii.gz")
        label = read_nifti(case / "label.nii.gz")[0] >= 0.5
        if dim == 3:
            yield f"la-{case.name[:8]}", image, label, affine
            continue
        for z in spread_slices(label, slices):
            plane = largest_component(label[:, :, z])
            if plane.sum() >= 50:
                box = context_box(plane, 0.3, min_margin=5)
                yield f"la-{case.name[:8]}_z{z:03d}", image[:, :, z][box], plane[box], np.eye(4)


def dermoscopy() -> Iterator[Pair]:
    for path in sorted((DATA / "ph2" / "images").iterdir())[HELD_OUT_PH2:]:
        label = read_png(DATA / "ph2" / "labels" / path.name) > 0
        yield f"ph2-{path.stem}", read_png(path), label, np.eye(4)


def em_cells(per_image: int, rng: np.random.Generator) -> Iterator[Pair]:
    for path in sorted((DATA / "em_cells" / "images").iterdir())[HELD_OUT_EM:]:
        image = read_png(path)
        cells, count = ndimage.label(read_png(DATA / "em_cells" / "membranes" / path.name) == 0)
        border = set(np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])))
        sizes = ndimage.sum_labels(cells > 0, cells, index=np.arange(1, count + 1))
        picks = [k + 1 for k in np.flatnonzero((sizes >= 300) & (sizes <= 40000)) if k + 1 not in border]
        for k in rng.permutation(picks)[:per_image]:
            cell = cells == k
            box = context_box(cell, 0.3, min_margin=5)
            yield f"em-{path.stem}_c{k:04d}", image[box], cell[box], np.eye(4)


def synthseg(dim: int, per_map: int, rng: np.random.Generator) -> Iterator[Pair]:
    for path in sorted((DATA / "synthseg_labels").glob("*.nii.gz")):
        labels = read_nifti(path)[0].astype(np.int32)
        tag = path.name.split(".")[0][-2:]
        allowed = [v for v in np.unique(labels) if v not in UNSEEN_LABELS | NOT_OBJECTS]
        for value in rng.permutation(allowed)[:per_map]:
            mask = largest_component(labels == value)
            if dim == 3:
                if mask.sum() < 500:
                    continue
                box = context_box(mask, 0.3)
                yield f"syn-{tag}_l{value:03d}", synthetic_image(labels[box], rng), mask[box], np.eye(4)
                continue
            axis = int(rng.integers(3))
            moved, planes = np.moveaxis(mask, axis, -1), np.moveaxis(labels, axis, -1)
            for z in spread_slices(moved, 2):
                plane = largest_component(moved[:, :, z])
                if plane.sum() < 80:
                    continue
                box = context_box(plane, 0.3, min_margin=8)
                image = synthetic_image(planes[:, :, z][box], rng)
                yield f"syn-{tag}_l{value:03d}a{axis}z{z:03d}", image, plane[box], np.eye(4)


def backgrounds(dim: int) -> list[np.ndarray]:
    if dim == 3:
        volumes = [read_nifti(case / "image.nii.gz")[0] for case in sorted((DATA / "la_mri").iterdir())[HELD_OUT_LA:][:6]]
        return volumes + [read_nifti(DATA / "brain_structures" / "t1.nii.gz")[0]]
    images = [read_png(p) for p in sorted((DATA / "hc18" / "images").iterdir())[:20]]
    images += [read_png(p) for p in sorted((DATA / "drive" / "images").iterdir())]
    images += [read_png(p) for p in sorted((DATA / "em_cells" / "images").iterdir())[HELD_OUT_EM:]]
    t1 = read_nifti(DATA / "brain_structures" / "t1.nii.gz")[0]
    return images + [t1[:, :, z] for z in range(60, 180, 20)]


def shapes(dim: int, count: int, rng: np.random.Generator) -> Iterator[Pair]:
    pool = backgrounds(dim)
    for n in range(count):
        source = pool[int(rng.integers(len(pool)))]
        side = [int(rng.integers(24, 64)) if dim == 3 else int(rng.integers(48, 160)) for _ in range(dim)]
        side = [min(s, t) for s, t in zip(side, source.shape)]
        start = [int(rng.integers(0, t - s + 1)) for s, t in zip(side, source.shape)]
        background = source[tuple(slice(a, a + s) for a, s in zip(start, side))].astype(np.float32)
        blob = random_blob(tuple(side), rng)
        if blob.sum() < (300 if dim == 3 else 60):
            continue
        yield f"shape-{n:04d}_0", paste(background, blob, rng), blob, np.eye(4)


def objects(dim: int, args: argparse.Namespace, rng: np.random.Generator) -> Iterator[Pair]:
    yield from left_atrium(dim, args.slices)
    if dim == 2:
        yield from dermoscopy()
        yield from em_cells(args.cells, rng)
    yield from synthseg(dim, args.synth_per_map, rng)
    yield from shapes(dim, args.shapes, rng)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=3, help="2D: axial slices per left-atrium volume")
    parser.add_argument("--cells", type=int, default=12, help="2D: EM cells per section")
    parser.add_argument("--synth-per-map", type=int, default=None, help="structures per SynthSeg map (default 2D 24, 3D 8)")
    parser.add_argument("--shapes", type=int, default=None, help="pasted blobs (default 2D 200, 3D 24)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.synth_per_map = args.synth_per_map or (24 if args.dim == 2 else 8)
    args.shapes = args.shapes or (200 if args.dim == 2 else 24)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for folder in ("images", "labels"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, image, label, affine in objects(args.dim, args, np.random.default_rng(args.seed)):
        write_pair(args.out, f"{name}.nii.gz", image, label, affine)
        kind = name.split("-")[0]
        counts[kind] = counts.get(kind, 0) + 1
    logger.info("written to %s: %s", args.out, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
