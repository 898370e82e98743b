"""Choose the refinement's free parameters on TRAINING objects only, with the robot user.

Settings are ``--conf`` values of the infer task (``refinement``, ``spatial_weight``,
``reach``) and request options (``lamda``), exactly as a server is configured; nothing is
patched. Objects (2D): the middle slice of every object in a ``prepare_anatomy.py --dim 2``
folder and every 40th HC18 image of a ``make_training_mix.py --dim 2`` folder (15), all of
them training data of the shipped 2D network; 3D (``--dim 3``): every object of a
``prepare_anatomy.py --dim 3`` folder. Never the objects the benchmarks report as unseen.
Prints per setting: mean Dice after 1/3/5/10 clicks, NoC@85/90, mean Dice gain per click,
the share of clicks that lower Dice by more than 0.01, and ms per click.

    python scripts/tune_refinement.py --anatomy runs/data/anatomy2d --mix runs/data/mix2d \\
        --setting refinement=ifgc --setting refinement=regions,spatial_weight=1,reach=2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.benchmark.methods import MIDeepSegMethod, midepseg_variant  # noqa: E402
from lib.benchmark.metrics import click_statistics  # noqa: E402
from lib.benchmark.protocol import run_protocol  # noqa: E402
from scripts.evaluate_generalisation import DATA  # noqa: E402

logger = logging.getLogger("tune_refinement")
CLICKS = 10


def training_objects(anatomy: Path, mix: Path | None, dim: int) -> list[tuple[Path, Path]]:
    if dim == 3:
        return [(p, anatomy / "labels" / p.name) for p in sorted((anatomy / "images").iterdir())]
    by_object: dict[str, list[Path]] = {}
    for path in sorted((anatomy / "images").iterdir()):
        by_object.setdefault(path.name.split("_z")[0], []).append(path)
    cases = [(ps[len(ps) // 2], anatomy / "labels" / ps[len(ps) // 2].name) for ps in by_object.values()]
    if mix is not None:
        heads = sorted(p for p in (mix / "images").iterdir() if not p.name.startswith("ana-"))[::40][:15]
        cases += [(p, DATA / "hc18" / "labels" / p.name) for p in heads]
    return cases


def score(method: MIDeepSegMethod, cases) -> dict:
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    results = []
    for image_path, label_path in cases:
        img = load(str(image_path))
        image = np.asarray(img, dtype=np.float32)
        spacing = np.asarray(img.pixdim, dtype=np.float64)[: image.ndim] if hasattr(img, "pixdim") else None
        reference = np.asarray(load(str(label_path))) > 0
        results.append(run_protocol(method, image, reference, spacing, max_clicks=CLICKS))
        method.end_case()
    method.close()
    return click_statistics(results, CLICKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--anatomy", type=Path, required=True)
    parser.add_argument("--mix", type=Path)
    parser.add_argument("--setting", action="append", required=True, help="key=value,... (conf keys, lamda/sigma)")
    parser.add_argument("--max-cases", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cases = training_objects(args.anatomy, args.mix, args.dim)[: args.max_cases]
    print(f"{len(cases)} training objects ({args.dim}D), {CLICKS} robot clicks")
    print("| setting | Dice 0 | Dice 1 | Dice 3 | Dice 5 | Dice 10 | NoC@85 | NoC@90 | gain/click | clicks worse >0.01 | ms/click |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for text in args.setting:
        stats = score(midepseg_variant(args.dim, text), cases)
        print(f"| {text} | " + " | ".join(
            f"{stats[k]:.3f}" for k in ("dice0", "dice1", "dice3", "dice5", "dice10")) +
            f" | {stats['noc85']:.2f} | {stats['noc90']:.2f} | {stats['gain_per_click']:.4f} | "
            f"{100 * stats['worse_fraction']:.1f} % | {1000 * stats['click_seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
