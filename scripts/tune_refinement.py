"""Check the refinement's free parameters on TRAINING objects only: the fusion's spatial
weight (``lib.transforms.fusion.SPATIAL_WEIGHT``) and the graph cut's ``lamda``, with the 2D
model and the robot user (up to 10 corrective clicks).

Objects: the middle slice of every object in a ``prepare_anatomy.py --dim 2`` folder and
every 40th HC18 image of a ``make_training_mix.py --dim 2`` folder (15), all of them
training data of the shipped 2D network; never the objects the benchmarks report as unseen.
Prints mean Dice after 3 and 10 clicks and NoC@90 per setting.

    python scripts/tune_refinement.py --anatomy runs/data/anatomy2d --mix runs/data/mix2d \\
        --spatial-weights 4 2 1 0.5 --lamdas 5 2.5 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lib.transforms.fusion as fusion  # noqa: E402
from lib.benchmark.methods import MIDeepSegMethod  # noqa: E402
from lib.benchmark.protocol import run_protocol  # noqa: E402
from lib.transforms.graph_cut import DEFAULT_LAMDA  # noqa: E402
from scripts.evaluate_generalisation import DATA  # noqa: E402

logger = logging.getLogger("tune_refinement")
CLICKS = 10


def training_objects(anatomy: Path, mix: Path) -> list[tuple[Path, Path]]:
    by_object: dict[str, list[Path]] = {}
    for path in sorted((anatomy / "images").iterdir()):
        by_object.setdefault(path.name.split("_z")[0], []).append(path)
    cases = [(ps[len(ps) // 2], anatomy / "labels" / ps[len(ps) // 2].name) for ps in by_object.values()]
    heads = sorted(p for p in (mix / "images").iterdir() if not p.name.startswith("ana-"))[::40][:15]
    return cases + [(p, DATA / "hc18" / "labels" / p.name) for p in heads]


def score(method: MIDeepSegMethod, cases) -> tuple[float, float, float]:
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    after3, after10, noc = [], [], []
    for image_path, label_path in cases:
        image = np.asarray(load(str(image_path)), dtype=np.float32)
        reference = np.asarray(load(str(label_path))) > 0
        result = run_protocol(method, image, reference, None, max_clicks=CLICKS)
        dice = result.dice + [result.dice[-1]] * (CLICKS + 1 - len(result.dice))
        after3.append(dice[3])
        after10.append(dice[CLICKS])
        noc.append(result.noc(0.9))
        method.end_case()
    method.close()
    return float(np.mean(after3)), float(np.mean(after10)), float(np.mean(noc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anatomy", type=Path, required=True)
    parser.add_argument("--mix", type=Path, required=True)
    parser.add_argument("--spatial-weights", type=float, nargs="*", default=[])
    parser.add_argument("--lamdas", type=float, nargs="*", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cases = training_objects(args.anatomy, args.mix)
    shipped = fusion.SPATIAL_WEIGHT
    print(f"{len(cases)} training objects; shipped spatial weight {shipped}, lamda {DEFAULT_LAMDA}")
    for weight in args.spatial_weights:
        fusion.SPATIAL_WEIGHT = weight
        print("spatial weight %-5g lamda %-5g Dice@3 %.4f Dice@10 %.4f NoC@90 %.2f" % (weight, DEFAULT_LAMDA, *score(MIDeepSegMethod(2), cases)))
    fusion.SPATIAL_WEIGHT = shipped
    for lamda in args.lamdas:
        print("spatial weight %-5g lamda %-5g Dice@3 %.4f Dice@10 %.4f NoC@90 %.2f" % (shipped, lamda, *score(MIDeepSegMethod(2, options={"lamda": lamda}), cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
