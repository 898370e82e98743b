"""Derive the 3D training objects from the BraTS cases in ../shared/data/brats.

Each case gives several objects, each written as an image + binary label pair (cropped to
the brain's bounding box) under ``--out``/images and ``--out``/labels:

* ``<case>_tc_t1c``: tumour core {1, 3, 4} in T1c (the paper's 3D training object),
* ``<case>_et_t1c``: enhancing tumour {4} in T1c, ``<case>_ncr_t1c``: necrosis and
  non-enhancing tumour {1, 3} in T1c, ``<case>_wt_t1c``: whole tumour {1, 2, 3, 4} in T1c,
* ``<case>_wt_flair``: whole tumour in FLAIR, ``<case>_tc_flair``: tumour core in FLAIR,
* ``<case>_brain_t1c``: the whole brain (brain mask) in T1c, a large object of another kind.

The extra objects add shapes, sizes and a modality, which helps the network generalise;
none of them is a brain structure or a CT organ, the unseen objects of the generalisation
check. ``--objects`` picks a subset.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

T1C, FLAIR = "T1c_subtrMeanDivStd.nii.gz", "Flair_subtrMeanDivStd.nii.gz"
# object -> (image, label values of OTMultiClass; None = the brain mask)
OBJECTS = {
    "tc_t1c": (T1C, (1, 3, 4)),
    "et_t1c": (T1C, (4,)),
    "ncr_t1c": (T1C, (1, 3)),
    "wt_t1c": (T1C, (1, 2, 3, 4)),
    "wt_flair": (FLAIR, (1, 2, 3, 4)),
    "tc_flair": (FLAIR, (1, 3, 4)),
    "brain_t1c": (T1C, None),
}


def prepare(brats_dir: Path, out: Path, objects: list[str]) -> list[str]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    for case in sorted(p for p in brats_dir.iterdir() if p.is_dir()):
        seg = nib.load(case / "OTMultiClass.nii.gz")
        brain = np.asarray(nib.load(case / "brainmask.nii.gz").dataobj) > 0
        idx = np.argwhere(brain)
        lo, hi = idx.min(0), idx.max(0) + 1
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        labels = np.asarray(seg.dataobj).astype(np.int16)
        name = case.name.replace("brats_2013_", "").replace("_1", "")
        for obj in objects:
            image_file, values = OBJECTS[obj]
            mask = brain if values is None else np.isin(labels, values)
            if mask.sum() < 50:
                logger.info("%s %s: too small (%d voxels), skipped", name, obj, mask.sum())
                continue
            image = nib.load(case / image_file)
            sliced = image.slicer[crop]
            out_name = f"{name}_{obj}.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(sliced.dataobj, dtype=np.float32), sliced.affine), out / "images" / out_name)
            nib.save(nib.Nifti1Image(mask[crop].astype(np.uint8), sliced.affine), out / "labels" / out_name)
            written.append(out_name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brats", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brats")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--objects", nargs="+", choices=sorted(OBJECTS), default=list(OBJECTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    for name in prepare(args.brats, args.out, args.objects):
        logger.info("wrote %s", name)


if __name__ == "__main__":
    main()
