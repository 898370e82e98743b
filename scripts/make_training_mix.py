"""Assemble the shipped models' training folders (symbolic links, nothing copied) from the
development data and the folders written by ``prepare_brats.py``/``prepare_anatomy.py``,
leaving out everything the generalisation check and the tests report as held out:

* ``--dim 2``: HC18 images except the validation subjects of
  ``scripts/evaluate_generalisation.py`` (same split; ``--hc18-max`` keeps every n-th
  subject's images so that one object type does not dominate), plus ``--anatomy`` 2D slices;
* ``--dim 3``: ``--brats`` objects except those of the held-out case ``pat0005``, plus
  ``--anatomy`` volumes;
* both: the class-agnostic objects of ``--generic`` (``prepare_generic_objects.py``), if given.

    python scripts/make_training_mix.py --dim 3 --brats runs/data/brats3d --anatomy runs/data/anatomy3d --out runs/data/mix3d
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.evaluate_generalisation import hc18_split  # noqa: E402

logger = logging.getLogger("make_training_mix")
HELD_OUT_BRATS = "pat0005"


def link(pairs: list[tuple[Path, Path]], out: Path, copies: dict[str, int] | None = None) -> int:
    """Link each (image, label) pair into ``out``/images and ``out``/labels under the image's
    name; a pair whose name starts with a prefix of ``copies`` is linked that many times
    (``NAME_rK``, the same subject for the validation split: one epoch then draws it K times)."""
    for folder in ("images", "labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    count = 0
    for image, label in pairs:
        times = max([n for prefix, n in (copies or {}).items() if image.name.startswith(prefix)], default=1)
        stem, suffix = image.name.split(".", 1)
        for k in range(times):
            name = image.name if k == 0 else f"{stem}_r{k}.{suffix}"
            for src, dst in ((image, out / "images" / name), (label, out / "labels" / name)):
                if not dst.exists():
                    dst.symlink_to(src.resolve())
            count += 1
    return count


def copy_spec(value: str) -> tuple[str, int]:
    """``"pat=4"`` -> ``("pat", 4)`` (an ``argparse`` type: a bad value is a usage error)."""
    prefix, _, times = value.partition("=")
    if not prefix or not times.isdigit() or int(times) < 1:
        raise argparse.ArgumentTypeError(f"--copies takes PREFIX=N with N >= 1, got {value!r}")
    return prefix, int(times)


def folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    return [(p, root / "labels" / p.name) for p in sorted((root / "images").iterdir()) if (root / "labels" / p.name).exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--anatomy", type=Path, required=True, help="output of prepare_anatomy.py")
    parser.add_argument("--brats", type=Path, help="3D: output of prepare_brats.py")
    parser.add_argument("--generic", type=Path, help="output of prepare_generic_objects.py")
    parser.add_argument("--hc18-max", type=int, help="2D: at most about this many HC18 images")
    parser.add_argument("--copies", nargs="*", type=copy_spec, default=[], metavar="PREFIX=N",
                        help="link objects whose name starts with PREFIX N times (rare types drawn more often)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    pairs = folder_pairs(args.anatomy)
    if args.dim == 2:
        train, _ = hc18_split()
        if args.hc18_max and len(train) > args.hc18_max:
            train = train[:: -(-len(train) // args.hc18_max)]
        pairs += [(Path(d["image"]), Path(d["label"])) for d in train]
    else:
        if args.brats is None:
            parser.error("--dim 3 needs --brats")
        pairs += [pair for pair in folder_pairs(args.brats) if not pair[0].name.startswith(HELD_OUT_BRATS)]
    if args.generic:
        pairs += folder_pairs(args.generic)
    logger.info("%d training pairs in %s", link(pairs, args.out, dict(args.copies)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
