"""Stage-1 Dice (margin points -> CNN -> graph cut, no refinement click) of the shipped
models on held-out and never-seen objects, through the same infer tasks the server runs.

Three variants per object: the trained network, the same architecture untrained (seeded
random weights), and the trained network with its EGD cue channel zeroed (box only: the
relaxed box still crops, but the margin points carry no shape information). Margin points
are the deterministic extreme points of the reference, moved inwards.

    python scripts/evaluate_generalisation.py --out runs/eval   # writes results.json + results.md

``--baselines geodesic litemedsam`` adds the classic geodesic nearest-seed labelling and
LiteMedSAM (box of the same points; a benchmark-only extra) from ``lib/benchmark/methods.py``
on the same margin points (2D; geodesic also 3D).

``--folder DIR`` evaluates every image/label pair of ``DIR``/images and ``DIR``/labels instead
(e.g. the held-out types of ``make_selection_set.py``), grouped by the file name's part before
the first ``-`` (the object type).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.transforms import LoadImage  # noqa: E402

from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig  # noqa: E402
from lib.benchmark.methods import build_methods  # noqa: E402
from lib.infers.image_cache import SHARED_LOADER  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.networks import PRECISIONS, midepseg_unet  # noqa: E402
from lib.trainers.midepseg_train import group_partition  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402

logger = logging.getLogger("evaluate")
DATA = ROOT / ".." / "shared" / "data"

BRAIN_STRUCTURES = {
    4: "left lateral ventricle",
    43: "right lateral ventricle",
    10: "left thalamus",
    49: "right thalamus",
    11: "left caudate",
    12: "left putamen",
    16: "brain stem",
    17: "left hippocampus",
    53: "right hippocampus",
}
CT_ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 5: "liver", 6: "stomach"}


class CueZeroed(torch.nn.Module):
    """The trained network fed a zero cue channel (box-only input)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 1] = 0
        return self.net(x)

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


def make_tasks(config_class, name: str, model_dir: Path, precision: str = "auto", conf: dict | None = None) -> dict:
    """The trained task (with its stage-1 ensemble, if any) and the model's own network
    untrained and with its cue zeroed, each alone (``stage1_ensemble none``: a trained member
    would otherwise answer for them)."""
    config = config_class()
    config.init(name, str(model_dir), {"precision": precision, **(conf or {})}, None)
    trained = config.infer()
    config.init(name, str(model_dir), {"precision": precision, **(conf or {}), "stage1_ensemble": "none"}, None)
    untrained = config.infer()
    untrained.path = []
    torch.manual_seed(0)
    untrained.network = midepseg_unet(config.dimension)
    box_only = config.infer()
    box_only.network = CueZeroed(midepseg_unet(config.dimension))
    return {"trained": trained, "untrained": untrained, "box only": box_only}


def stage1(task, image_path: str, points: np.ndarray, **extra) -> np.ndarray:
    """The task's mask for the margin points alone; ``extra``: further request keys (e.g.
    ``slice_axis`` for the 2D model on a volume)."""
    request = {"image": image_path, "foreground": points.tolist(), "background": [], "device": "cpu", "logging": "WARNING",
               "skip_writer": True, "margin_points": len(points), **extra}
    _, data = task(request)
    return np.asarray(data["pred"]) > 0


def hc18_split() -> tuple[list[dict], list[dict]]:
    """HC18 ``(train, validation)`` by subject: the split of the shipped 2D model, held out of
    every training mix (``make_training_mix.py``)."""
    images = sorted((DATA / "hc18" / "images").iterdir())
    items = [{"image": str(p), "label": str(DATA / "hc18" / "labels" / p.name)} for p in images]
    return group_partition(items, 0.1, r"^(\d+)_", 0)


def cases_2d() -> list[dict]:
    """2D objects: HC18 validation subjects (seen), and the largest slice of unseen objects."""
    cases = []
    _, val = hc18_split()
    for item in val:
        cases.append({"group": "HC18 fetal head (held-out subjects)", "image": item["image"], "label": item["label"]})
    volumes = [(DATA / "brain_structures" / "t1.nii.gz", DATA / "brain_structures" / "labels.nii.gz", BRAIN_STRUCTURES, "brain structures, T1 MRI")]
    volumes.append((DATA / "totalseg_ct" / "ct.nii.gz", DATA / "totalseg_ct" / "labels.nii.gz", CT_ORGANS, "abdominal organs, CT"))
    for image, label, objects, group in volumes:
        for value, name in objects.items():
            cases.append({"group": group, "image": str(image), "label": str(label), "value": value, "name": name, "slice": True})
    for case in sorted((DATA / "brats").iterdir()):
        for values, image, name in (((1, 3, 4), "T1c_subtrMeanDivStd.nii.gz", "tumour core T1c"), ((1, 2, 3, 4), "Flair_subtrMeanDivStd.nii.gz", "whole tumour FLAIR")):
            cases.append({"group": "brain tumour, MRI", "image": str(case / image), "label": str(case / "OTMultiClass.nii.gz"),
                          "value": values, "name": f"{case.name} {name}", "slice": True})
    return cases


def cases_3d() -> list[dict]:
    cases = [{"group": "BraTS tumour core T1c (held-out case)", "image": str(DATA / "brats" / "brats_2013_pat0005_1" / "T1c_subtrMeanDivStd.nii.gz"),
              "label": str(DATA / "brats" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz"), "value": (1, 3, 4), "name": "pat0005 tumour core"}]
    for value, name in BRAIN_STRUCTURES.items():
        cases.append({"group": "brain structures, T1 MRI (unseen)", "image": str(DATA / "brain_structures" / "t1.nii.gz"),
                      "label": str(DATA / "brain_structures" / "labels.nii.gz"), "value": value, "name": name})
    for value, name in CT_ORGANS.items():
        cases.append({"group": "abdominal organs, CT (unseen)", "image": str(DATA / "totalseg_ct" / "ct.nii.gz"),
                      "label": str(DATA / "totalseg_ct" / "labels.nii.gz"), "value": value, "name": name})
    return cases


def cases_folder(folder: Path) -> list[dict]:
    """Every pair of ``folder``/images and ``folder``/labels, grouped by the name's type prefix."""
    return [
        {"group": path.name.split("-")[0], "image": str(path), "label": str(folder / "labels" / path.name), "name": path.name.split(".")[0]}
        for path in sorted((folder / "images").iterdir())
        if (folder / "labels" / path.name).exists()
    ]


def reference(case: dict, loader: LoadImage) -> tuple[np.ndarray, np.ndarray]:
    """Binary reference (as MONAI loads it, i.e. in the server's voxel order) and spacing."""
    label = loader(case["label"])
    values = case.get("value")
    arr = np.asarray(label)
    mask = arr > 0 if values is None else np.isin(arr, np.atleast_1d(values))
    spacing = np.asarray(label.pixdim)[: mask.ndim] if hasattr(label, "pixdim") else np.ones(mask.ndim)
    return mask, spacing


def evaluate(
    dim: int, model_dir: Path, limit_hc18: int | None, precision: str = "auto", folder: Path | None = None,
    baselines: tuple[str, ...] = (), conf: dict | None = None, request: dict | None = None,
) -> list[dict]:
    """Stage-1 rows per case; ``conf``: task options (``--conf``), ``request``: request parameters
    sent with every stage-1 request (e.g. ``lamda``/``sigma`` of the graph cut)."""
    config = MIDeepSeg2DConfig if dim == 2 else MIDeepSeg3DConfig
    tasks = make_tasks(config, f"midepseg_{dim}d", model_dir, precision, conf)
    methods = [m for m in build_methods(baselines, dims=(dim,))[0] if m.supports(dim)]
    loader = LoadImage(image_only=True)
    rows = []
    if folder is not None:
        cases = cases_folder(folder)
    else:
        cases = cases_2d() if dim == 2 else cases_3d()
    if dim == 2 and limit_hc18:
        hc = [c for c in cases if c["group"].startswith("HC18")][:limit_hc18]
        cases = hc + [c for c in cases if not c["group"].startswith("HC18")]
    for case in cases:
        mask, spacing = reference(case, loader)
        if case.get("slice"):
            k = int(np.argmax(mask.sum(axis=(0, 1))))
            ref = mask[..., k]
            points = extreme_margin_points(ref, spacing[:2])
            points = np.concatenate([points, np.full((len(points), 1), k)], axis=1)
        else:
            ref = mask
            points = extreme_margin_points(ref, spacing)
        row = {"group": case["group"], "name": case.get("name", os.path.basename(case["image"])), "points": len(points)}
        if methods:  # the image as the server reads it (colour as luminance), loaded once for these and the tasks
            image = SHARED_LOADER.load(case["image"])[0].array[0]
            image = image[..., k] if case.get("slice") else image
            empty = np.zeros((0, ref.ndim), dtype=np.int64)
            for method in methods:
                method.begin_case(image, spacing[: ref.ndim])
                pred = method.segment(image, spacing[: ref.ndim], points[:, : ref.ndim], empty, empty)
                method.end_case()
                row[method.key] = round(dice(pred, ref), 4)
        for variant, task in tasks.items():
            start = time.perf_counter()
            pred = stage1(task, case["image"], points, **(request or {}))
            row[f"{variant} s"] = round(time.perf_counter() - start, 3)
            if case.get("slice"):
                pred = pred[..., k]
            row[variant] = round(dice(pred, ref), 4)
        logger.info("%dD %-40s %-28s %s", dim, row["group"], row["name"], {v: row[v] for v in tasks})
        rows.append(row)
    return rows


def summary(rows: list[dict], dim: int) -> str:
    variants = [v for v in ("trained", "untrained", "box only", "geodesic", "litemedsam") if v in rows[0]]
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    lines = [f"| {dim}D model: object group | n | " + " | ".join(f"Dice {v}" for v in variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for group, items in groups.items():
        cells = [f"{np.mean([r[v] for r in items]):.3f} ± {np.std([r[v] for r in items]):.3f}" for v in variants]
        lines.append(f"| {group} | {len(items)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "apps" / "midepseg" / "model")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "eval")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="network compute precision (lib/networks.py)")
    parser.add_argument("--limit-hc18", type=int, default=None, help="evaluate only the first N HC18 validation images")
    parser.add_argument("--baselines", nargs="*", default=[], choices=["geodesic", "litemedsam"], help="methods of lib/benchmark on the same points")
    parser.add_argument("--folder", type=Path, default=None, help="evaluate the image/label pairs of this folder (one --dims)")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a task option as the server's --conf takes it (e.g. --conf stage1_resolution work)")
    parser.add_argument("--request", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a numeric request parameter for every stage-1 request (e.g. --request lamda 20 --request sigma 0.03)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("monailabel", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found")
    args.out.mkdir(parents=True, exist_ok=True)
    results, tables = {}, []
    for dim in args.dims:
        rows = evaluate(dim, args.model_dir, args.limit_hc18, args.precision, args.folder, tuple(args.baselines),
                        dict(args.conf), {key: float(value) for key, value in args.request})
        results[f"{dim}d"] = rows
        tables.append(summary(rows, dim))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
