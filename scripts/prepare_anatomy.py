"""Derive extra training objects of other kinds from the anatomy scans in ../shared/data.

The brain-structure MRI and the abdominal CT carry labels for many structures. The ones the
generalisation check reports as *unseen* (``scripts/evaluate_generalisation.py``:
``BRAIN_STRUCTURES``, ``CT_ORGANS``) are never written here, nor their mirror images
(right caudate and putamen, whose left twins are unseen objects); every other structure
large enough to click on is. Each object is its label's largest connected component.

Writes image + binary label pairs under ``--out``/images and ``--out``/labels (same file
names, NIfTI), for ``--dim``:

* 3: the object's bounding box grown by ``--context`` of its extent (at least 10 voxels) on
  every side, as a volume ``ana-<scan>-<value>.nii.gz`` (affine moved to the crop);
* 2: ``--slices`` axial slices evenly spread over the object's extent, each cropped the same
  way, as 2D NIfTI ``ana-<scan>-<value>_z<index>.nii.gz``.

    python scripts/prepare_anatomy.py --dim 3 --out runs/data/anatomy3d
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.evaluate_generalisation import BRAIN_STRUCTURES, CT_ORGANS, DATA  # noqa: E402

logger = logging.getLogger("prepare_anatomy")

# FreeSurfer numbering; the right twins of the unseen left caudate (11) and putamen (12) stay out.
MIRRORS_OF_UNSEEN = {50: "right caudate", 51: "right putamen"}
BRAIN_OBJECTS: dict[tuple[int, ...], str] = {
    (2,): "left cerebral white matter",
    (41,): "right cerebral white matter",
    (7,): "left cerebellum white matter",
    (46,): "right cerebellum white matter",
    (8,): "left cerebellum cortex",
    (47,): "right cerebellum cortex",
    (13,): "left pallidum",
    (52,): "right pallidum",
    (14,): "third ventricle",
    (15,): "fourth ventricle",
    (18,): "left amygdala",
    (54,): "right amygdala",
    (28,): "left ventral diencephalon",
    (60,): "right ventral diencephalon",
    (26,): "left accumbens",
    (58,): "right accumbens",
    (251, 252, 253, 254, 255): "corpus callosum",
}
# TotalSegmentator v2 numbering.
CT_OBJECTS: dict[tuple[int, ...], str] = {
    (4,): "gallbladder",
    (7,): "pancreas",
    (11,): "left lung lower lobe",
    (14,): "right lung lower lobe",
    (19,): "duodenum",
    (20,): "colon",
    (30,): "L2 vertebra",
    (31,): "L1 vertebra",
    (32,): "T12 vertebra",
    (52,): "aorta",
    (63,): "inferior vena cava",
    (64,): "portal and splenic vein",
    (79,): "spinal cord",
    (86,): "left autochthonous back muscle",
    (87,): "right autochthonous back muscle",
}
SCANS = {
    "brain": ("brain_structures/t1.nii.gz", "brain_structures/labels.nii.gz", BRAIN_OBJECTS, set(BRAIN_STRUCTURES) | set(MIRRORS_OF_UNSEEN)),
    "ct": ("totalseg_ct/ct.nii.gz", "totalseg_ct/labels.nii.gz", CT_OBJECTS, set(CT_ORGANS)),
}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (face connectivity) of a binary mask."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def context_box(mask: np.ndarray, context: float, min_margin: int = 10) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``context`` of its extent (>= ``min_margin``) per side."""
    nz = np.argwhere(mask)
    lo, hi = nz.min(0), nz.max(0) + 1
    grow = np.maximum(np.ceil((hi - lo) * context), min_margin).astype(int)
    lo, hi = np.maximum(lo - grow, 0), np.minimum(hi + grow, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def write_pair(out: Path, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    for folder, array in (("images", image.astype(np.float32)), ("labels", label.astype(np.uint8))):
        nib.save(nib.Nifti1Image(array, affine), out / folder / name)


def prepare(data: Path, out: Path, dim: int, slices: int, context: float, min_voxels: int) -> int:
    """Write the objects; returns how many pairs were written."""
    for folder in ("images", "labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    written = 0
    for scan, (image_file, label_file, objects, unseen) in SCANS.items():
        image_nii = nib.load(data / image_file)
        image = np.asarray(image_nii.dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(data / label_file).dataobj).astype(np.int32)
        for values, what in objects.items():
            if unseen & set(values):
                raise ValueError(f"{what} overlaps an unseen object of the generalisation check")
            mask = largest_component(np.isin(labels, values))
            if mask.sum() < min_voxels:
                logger.info("%s %s: %d voxels, skipped", scan, what, mask.sum())
                continue
            stem = f"ana-{scan}-{values[0]:03d}"
            if dim == 3:
                box = context_box(mask, context)
                affine = image_nii.affine.copy()
                affine[:3, 3] = image_nii.affine[:3, :3] @ [s.start for s in box] + image_nii.affine[:3, 3]
                write_pair(out, f"{stem}.nii.gz", image[box], mask[box], affine)
                written += 1
                continue
            z_any = np.flatnonzero(mask.any(axis=(0, 1)))
            for z in np.unique(np.linspace(z_any[0], z_any[-1], slices + 2)[1:-1].round().astype(int)):
                plane = largest_component(mask[:, :, z])
                if plane.sum() < max(20, min_voxels // 20):
                    continue
                box = context_box(plane, context, min_margin=5)
                write_pair(out, f"{stem}_z{z:03d}.nii.gz", image[:, :, z][box], plane[box], np.eye(4))
                written += 1
        logger.info("%s: done", scan)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--slices", type=int, default=5, help="2D: axial slices per object")
    parser.add_argument("--context", type=float, default=0.3, help="crop margin, fraction of the object's extent")
    parser.add_argument("--min-voxels", type=int, default=300)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    count = prepare(args.data, args.out, args.dim, args.slices, args.context, args.min_voxels)
    logger.info("%d image/label pairs in %s", count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
