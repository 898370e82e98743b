"""Thin objects for the question "what do margin points mean for a vessel?": patches of the
DRIVE fundus photographs (luminance) around a piece of the vessel tree, the object being the
largest connected piece of vessel inside the patch (2D NIfTI pairs, type prefix ``vessel-``).
Evaluate with ``evaluate_generalisation.py --dims 2 --folder DIR --baselines geodesic litemedsam``.

    .venv/bin/python scripts/make_thin_set.py --out runs/data/thin2d
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.prepare_anatomy import largest_component  # noqa: E402
from scripts.make_selection_set import DATA, read_png, save  # noqa: E402

logger = logging.getLogger("make_thin_set")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96, help="patch side (pixels)")
    parser.add_argument("--per-image", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for sub in ("images", "labels"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = 0
    for path in sorted((DATA / "drive" / "images").iterdir()):
        image = read_png(path)
        vessels = read_png(DATA / "drive" / "vessels" / path.name) > 0
        for _ in range(args.per_image):
            x, y = (int(rng.integers(60, s - 60 - args.size)) for s in vessels.shape)
            window = (slice(x, x + args.size), slice(y, y + args.size))
            piece = largest_component(vessels[window])
            if piece.sum() < 60:
                continue
            save(args.out, f"vessel-{path.stem}-{x}-{y}", image[window], piece, (1.0, 1.0))
            count += 1
    logger.info("%d thin objects in %s", count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
