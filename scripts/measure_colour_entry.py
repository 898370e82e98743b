"""How should colour photographs enter the single-channel networks? Stage-1 Dice (margin
points -> CNN -> graph cut, the server's 2D infer task) on the PH2 dermoscopy images when the
network gets the red, green or blue channel or the luminance (what the loader now gives),
and of the classic geodesic nearest-seed labelling from the same points on each.

    .venv/bin/python scripts/measure_colour_entry.py --model-dir apps/midepseg/model --images 0:8
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.midepseg import MIDeepSeg2DConfig  # noqa: E402
from lib.benchmark.methods import GeodesicMethod  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.transforms.intensity import luminance  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from scripts.evaluate_generalisation import DATA, stage1  # noqa: E402

logger = logging.getLogger("measure_colour_entry")


def entries(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """``(3, X, Y)`` -> the single-channel images to compare."""
    return {"red": rgb[0], "green": rgb[1], "blue": rgb[2], "luminance": luminance(rgb)[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "apps" / "midepseg" / "model")
    parser.add_argument("--images", default="0:60", help="slice of the sorted PH2 file list, e.g. 0:8 (held out of training)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("monailabel", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(args.model_dir), {}, None)
    task, geodesic = config.infer(), GeodesicMethod()
    lo, hi = (int(v) for v in args.images.split(":"))
    scores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((DATA / "ph2" / "images").iterdir())[lo:hi]:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 1, 0)  # (3, x, y)
            ref = np.asarray(Image.open(DATA / "ph2" / "labels" / path.name)).T > 0
            points = extreme_margin_points(ref, (1.0, 1.0))
            for name, grey in entries(rgb).items():
                file = Path(tmp) / f"{name}.nii.gz"
                nib.save(nib.Nifti1Image(grey, np.eye(4)), file)
                scores.setdefault(f"MIDeepSeg, {name}", []).append(dice(stage1(task, str(file), points), ref))
                mask = geodesic.segment(grey, np.ones(2), points, np.zeros((0, 2), int), np.zeros((0, 2), int))
                scores.setdefault(f"geodesic, {name}", []).append(dice(mask, ref))
            logger.info("%s %s", path.stem, {k: round(v[-1], 3) for k, v in scores.items()})
    print("| input | n | mean Dice | median |\n|---|---|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {len(values)} | {np.mean(values):.3f} | {np.median(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
