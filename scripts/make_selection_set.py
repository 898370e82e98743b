"""A 2D *selection* set for choosing refinement settings, from the folders of ``../shared/data``
added for issue 13: spleen CT, spinal cord MR and SEM axons (types no shipped network was
trained on) and the left-atrium MRI volumes and dermoscopy images (as luminance) that
``prepare_generic_objects.py`` holds out of the class-agnostic mix (its ``HELD_OUT_LA``,
``HELD_OUT_PH2``: the same first 8 of each). One 2D NIfTI image/label pair per object: the
largest axial slice of a volume, or one connected component of a 2D label (``--dim 3``: the
volumes whole, and two CT structures no network was trained on: :data:`SELECTION_CT`). Settings are chosen on these, then reported on the unseen dev sets.

    .venv/bin/python scripts/make_selection_set.py --out runs/data/select2d
    .venv/bin/python scripts/make_selection_set.py --dim 3 --out runs/data/select3d
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.prepare_anatomy import largest_component  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
logger = logging.getLogger("make_selection_set")
LA_CASES = 8
PH2_CASES = 8
AXONS_PER_IMAGE = 3
MIN_AXON_PIXELS = 400
# 3D only: structures of the TotalSegmentator CT (v2 numbering) that no network was trained
# on (prepare_anatomy.py's CT_OBJECTS) and no table reports (evaluate_generalisation.py's
# CT_ORGANS), as their largest connected component; the left iliopsoas' right twin (89) stays out too.
SELECTION_CT = {18: "small-bowel", 88: "left-iliopsoas"}


def read_png(path: Path) -> np.ndarray:
    """A PNG as luminance (PIL's BT.601 weights), (x, y) as MONAI's LoadImage reads it."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32).T


def largest_slice(image: np.ndarray, label: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The axial slice (last axis) with the most label voxels."""
    z = int(np.argmax(label.reshape(-1, label.shape[-1]).sum(0)))
    return image[..., z], label[..., z], tuple(spacing[:2])


def save(out: Path, name: str, image: np.ndarray, label: np.ndarray, spacing) -> None:
    affine = np.diag([*spacing, 1.0, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), out / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), out / "labels" / f"{name}.nii.gz")


def volume_objects():
    for case in sorted((DATA / "la_mri").iterdir())[:LA_CASES]:
        yield f"la-{case.name[:8]}", case / "image.nii.gz", case / "label.nii.gz"
    yield "spleen-ct", DATA / "spleen_ct" / "ct.nii.gz", DATA / "spleen_ct" / "label.nii.gz"
    cord = DATA / "spinal_cord"
    yield "cord-t2", cord / "t2_t2.nii.gz", cord / "t2_t2_seg-manual.nii.gz"
    yield "cord-t1", cord / "t1_t1w.nii.gz", cord / "t1_t1w_seg-manual.nii.gz"
    yield "cord-gm-t2s", cord / "t2s_t2s_uncropped.nii.gz", cord / "t2s_t2s_uncropped_gmseg_manual.nii.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for sub in ("images", "labels"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    count = 0
    for name, image_path, label_path in volume_objects():
        img = nib.load(str(image_path))
        image = np.asarray(img.dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(label_path)).dataobj, dtype=np.float32) >= 0.5
        if args.dim == 3:
            nib.save(nib.Nifti1Image(image, img.affine), args.out / "images" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(label.astype(np.uint8), img.affine), args.out / "labels" / f"{name}.nii.gz")
        else:
            save(args.out, name, *largest_slice(image, label, img.header.get_zooms()))
        count += 1
    if args.dim == 3:
        img = nib.load(str(DATA / "totalseg_ct" / "ct.nii.gz"))
        image = np.asarray(img.dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(str(DATA / "totalseg_ct" / "labels.nii.gz")).dataobj).astype(np.int32)
        for value, name in SELECTION_CT.items():
            largest = largest_component(labels == value)
            nib.save(nib.Nifti1Image(image, img.affine), args.out / "images" / f"ct-{name}.nii.gz")
            nib.save(nib.Nifti1Image(largest.astype(np.uint8), img.affine), args.out / "labels" / f"ct-{name}.nii.gz")
            count += 1
        logger.info("%d selection objects in %s", count, args.out)
        return 0
    for path in sorted((DATA / "ph2" / "images").iterdir())[:PH2_CASES]:
        image = read_png(path)
        label = read_png(DATA / "ph2" / "labels" / path.name) > 0
        save(args.out, f"ph2-{path.stem}", image, label, (1.0, 1.0))
        count += 1
    for path in sorted((DATA / "sem_axons" / "images").iterdir())[:2]:
        image = read_png(path)
        labels, n = ndimage.label(read_png(DATA / "sem_axons" / "axon" / path.name) > 0)
        sizes = ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))
        picks = [k + 1 for k in np.argsort(sizes)[::-1] if sizes[k] >= MIN_AXON_PIXELS]
        for k in picks[:: max(1, len(picks) // AXONS_PER_IMAGE)][:AXONS_PER_IMAGE]:
            save(args.out, f"axon-{path.stem[:20]}-{k}", image, labels == k, (1.0, 1.0))
            count += 1
    logger.info("%d selection objects in %s", count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
