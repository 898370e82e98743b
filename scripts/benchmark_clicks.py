#!/usr/bin/env python
"""Robot-user benchmark: MIDeepSeg against classic interactive methods on the same clicks
(GitHub issue 5). Protocol: ``lib/benchmark/protocol.py``; methods: ``lib/benchmark/methods.py``.

Per object and method: deterministic interior margin points, then up to ``--clicks``
corrective clicks (default 20 in 2D, 10 in 3D) by the robot user; Dice/ASSD after each
interaction, latency, NoC@85/NoC@90.

Data:

* ``--preset shared``: ``../shared/data`` (the case lists of scripts/evaluate_generalisation.py):
  HC18 validation subjects (2D), BraTS tumour core (largest axial slice with the 2D model;
  held-out volume pat0005 with the 3D model), brain structures and CT organs (largest slice,
  2D; whole object, 3D).
* ``--images DIR --labels DIR``: every image with a label of the same file name (or stem);
  2D PNG/JPEG/TIFF or 3D NIfTI/NRRD/MHA; ``--label-values`` says which label values form the
  object (default: > 0); ``--volumes 3d|2d|both`` segments volumes in 3D and/or on their
  largest axial slice.

Outputs under ``--out``: ``results.json`` (everything, incl. clicks), ``results.csv`` (one row
per interaction), ``summary.md`` (per data set and method), ``dice_vs_clicks.png``,
``metrics.png`` (NoC@90, DSC AUC, NSD, gain per click, error removed per click, share of the
pointed error region fixed), and
``overlays/*.png`` (image, clicks, result and reference after 0, 1 and 5 clicks) for the
first ``--overlays`` cases of each data set.

    .venv/bin/python scripts/benchmark_clicks.py --preset shared --max-cases 3 --clicks 5 --out runs/bench_clicks
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.benchmark.methods import METHOD_KEYS, Method, build_methods, midepseg_variant  # noqa: E402
from lib.benchmark.metrics import (UNCHANGED_BELOW, WORSE_BY, dsc_auc, error_removed_per_click, mean_fixed_share,  # noqa: E402
                                   step_statistics, unchanged_share)
from lib.benchmark.protocol import DEFAULT_MAX_CLICKS, NOC_THRESHOLDS, ProtocolResult, run_protocol  # noqa: E402

logger = logging.getLogger("benchmark_clicks")
DATA = ROOT / ".." / "shared" / "data"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
OVERLAY_STEPS = (0, 1, 5)


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    name = path.name
    for ext in sorted(IMAGE_EXTS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def preset_shared_cases(dims) -> list[dict]:
    """The shared development data, reusing scripts/evaluate_generalisation.py's case lists."""
    from scripts.evaluate_generalisation import cases_2d, cases_3d

    cases = []
    if 2 in dims:
        names = {
            "HC18": "HC18 fetal head (val) 2D",
            "brain tumour": "BraTS tumour core 2D",
            "brain structures": "brain structures 2D",
            "abdominal organs": "CT organs 2D",
        }
        for c in cases_2d():
            if c["group"].startswith("brain tumour") and "tumour core" not in c.get("name", ""):
                continue  # whole tumour (FLAIR) is not part of this benchmark
            dataset = next(v for k, v in names.items() if c["group"].startswith(k))
            cases.append(dict(c, dataset=dataset, dim=2, name=c.get("name") or Path(c["image"]).name))
    if 3 in dims:
        names = {"BraTS": "BraTS tumour core 3D", "brain structures": "brain structures 3D", "abdominal organs": "CT organs 3D"}
        for c in cases_3d():
            dataset = next(v for k, v in names.items() if c["group"].startswith(k))
            cases.append(dict(c, dataset=dataset, dim=3, slice=False))
    return cases


def _spatial_dims(path: Path) -> int:
    """2 for a NIfTI file holding one slice, else 3 (other volume formats are taken as 3D)."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        shape = nib.load(str(path)).shape
        return 2 if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1) else 3
    return 3


def folder_cases(images: Path, labels: Path, values, volumes: str, dataset: str | None) -> list[dict]:
    """Pairs of image and label files with the same name (or stem) in two folders."""
    label_files = {p.name: p for p in labels.iterdir() if p.is_file()}
    label_stems = {_stem(p): p for p in label_files.values()}
    cases = []
    name = dataset or images.resolve().name
    for path in sorted(p for p in images.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTS)):
        label = label_files.get(path.name) or label_stems.get(_stem(path))
        if label is None:
            logger.warning("no label for %s, skipped", path.name)
            continue
        is_volume = path.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")) and _spatial_dims(path) == 3
        base = {"image": str(path), "label": str(label), "value": values, "name": _stem(path)}
        if not is_volume:
            cases.append(dict(base, dataset=f"{name} 2D", dim=2, slice=False))
            continue
        if volumes in ("3d", "both"):
            cases.append(dict(base, dataset=f"{name} 3D", dim=3, slice=False))
        if volumes in ("2d", "both"):
            cases.append(dict(base, dataset=f"{name} 2D (largest slice)", dim=2, slice=True))
    return cases


class _ArrayCache:
    """Loaded files (array + spacing), a few at a time (the brain volume serves 9 objects)."""

    def __init__(self, capacity: int = 4) -> None:
        from monai.transforms import LoadImage

        self._load = LoadImage(image_only=True)
        self._items: OrderedDict = OrderedDict()
        self.capacity = capacity

    def __call__(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if path not in self._items:
            img = self._load(path)
            arr = np.asarray(img)
            if path.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")) and arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = arr[..., :3].mean(axis=-1)  # colour -> grey
            ndim = arr.ndim
            spacing = np.asarray(img.pixdim, dtype=np.float64)[:ndim] if hasattr(img, "pixdim") else np.ones(ndim)
            self._items[path] = (arr, spacing)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        self._items.move_to_end(path)
        return self._items[path]


def load_case(case: dict, cache: _ArrayCache) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """``(image float32, reference bool, spacing, slice index or None)`` in LoadImage's voxel order."""
    image, spacing = cache(case["image"])
    label, _ = cache(case["label"])
    values = case.get("value")
    ref = label > 0 if values is None else np.isin(label, np.atleast_1d(values))
    if ref.shape != image.shape:
        raise ValueError(f"{case['name']}: image {image.shape} and label {ref.shape} differ in shape")
    k = None
    if case.get("slice"):
        if ref.ndim != 3:
            raise ValueError(f"{case['name']}: a slice case needs a 3D volume")
        k = int(np.argmax(ref.sum(axis=(0, 1))))
        image, ref, spacing = image[..., k], ref[..., k], spacing[:2]
    return np.ascontiguousarray(image, dtype=np.float32), ref, spacing, k


# --------------------------------------------------------------------------------------
# Records, summary, plots
# --------------------------------------------------------------------------------------


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def make_record(case: dict, method: Method, result: ProtocolResult, shape, spacing, k) -> dict:
    return {
        "dataset": case["dataset"],
        "case": case["name"],
        "image": case["image"],
        "slice": k,
        "dim": len(shape),
        "shape": list(shape),
        "spacing": [float(s) for s in spacing],
        "method": method.key,
        "method_name": method.name,
        "hard_constraints": method.hard_constraints,
        "margin_points": result.margin_points.tolist(),
        "clicks": result.clicks,
        "dice": [round(d, 4) for d in result.dice],
        "fixed": [None if not np.isfinite(f) else round(f, 4) for f in result.fixed],
        "assd": [_finite(a) for a in result.assd],
        "latency_s": [round(t, 4) for t in result.latency],
        "max_clicks": result.max_clicks,
        "stopped_early": result.stopped_early,
        **{f"noc{int(round(t * 100))}": result.noc(t) for t in NOC_THRESHOLDS},
        "dsc_auc": round(dsc_auc(result.dice), 4),
        "nsd_final": _finite(result.nsd_final),
    }


def write_csv(records: list[dict], path: Path) -> None:
    fields = ["dataset", "case", "dim", "method", "step", "click", "click_foreground", "dice", "assd", "latency_s"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in records:
            for step, (d, a, t) in enumerate(zip(r["dice"], r["assd"], r["latency_s"])):
                click = r["clicks"][step - 1] if step else None
                writer.writerow({
                    "dataset": r["dataset"], "case": r["case"], "dim": r["dim"], "method": r["method_name"], "step": step,
                    "click": "" if click is None else " ".join(map(str, click["point"])),
                    "click_foreground": "" if click is None else int(click["foreground"]),
                    "dice": d, "assd": "" if a is None else a, "latency_s": t,
                })


def _after(values: list, k: int):
    return values[min(k, len(values) - 1)]


def _mean(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summary_markdown(records: list[dict], unavailable: dict[str, str]) -> str:
    by_dataset: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_dataset[r["dataset"]][r["method_name"]].append(r)
    lines = ["# Robot-user click benchmark", ""]
    lines.append("Dice after the interior margin points (MP), after 1, 5, 10 and all corrective clicks; ASSD and NSD "
                 "(normalised surface Dice, 2 mm) after all clicks; NoC@85/90 = corrective clicks until Dice >= 0.85/0.90 "
                 "(budget when never); DSC AUC = area under Dice over the margin points and 5 clicks (0-5, CVPR 2025 "
                 "interactive 3D challenge); gain/click = mean Dice change per click; error/click = mean share of the "
                 "remaining error (1 - Dice) a click removes; worse = share of clicks that "
                 f"lower Dice by more than {WORSE_BY}; unchanged = share of clicks that change Dice by less than "
                 f"{UNCHANGED_BELOW}; fixed = mean share of the error region a click points at (the connected "
                 "component of the error of its kind that holds it) that the result after it labels right; "
                 "latency = mean wall time of the margin-point interaction "
                 "(stage 1) and of a corrective click.")
    lines.append("")
    for dataset, methods in by_dataset.items():
        cap = max(r["max_clicks"] for rs in methods.values() for r in rs)
        lines.append(f"## {dataset}")
        lines.append("")
        lines.append(f"| method | n | Dice MP | Dice 1 | Dice 5 | Dice 10 | Dice {cap} (all) | ASSD {cap} | NSD {cap} | NoC@85 | "
                     "NoC@90 | DSC AUC | gain/click | error/click | worse | unchanged | fixed | latency MP (s) | latency/click (s) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, rs in methods.items():
            def d(k: int) -> float:
                return _mean([_after(r["dice"], k) for r in rs]) if k <= cap else float("nan")

            final = [_after(r["dice"], r["max_clicks"]) for r in rs]
            gain, worse = step_statistics([r["dice"] for r in rs])
            cells = [
                name, str(len(rs)), *(f"{d(k):.3f}" if k <= cap else "–" for k in (0, 1, 5, 10)),
                f"{np.mean(final):.3f} ± {np.std(final):.3f}",
                f"{_mean([_after(r['assd'], r['max_clicks']) for r in rs]):.2f}",
                f"{_mean([r['nsd_final'] for r in rs]):.3f}",
                f"{np.mean([r['noc85'] for r in rs]):.1f}", f"{np.mean([r['noc90'] for r in rs]):.1f}",
                f"{np.mean([r['dsc_auc'] for r in rs]):.2f}",
                f"{gain:.4f}", f"{error_removed_per_click([r['dice'] for r in rs]):.3f}", f"{100 * worse:.1f} %",
                f"{100 * unchanged_share([r['dice'] for r in rs]):.1f} %",
                f"{100 * mean_fixed_share([r.get('fixed', []) for r in rs]):.1f} %",
                f"{np.mean([r['latency_s'][0] for r in rs]):.2f}",
                f"{_mean([t for r in rs for t in r['latency_s'][1:]]):.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if unavailable:
        lines.append("Unavailable methods: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
        lines.append("")
    return "\n".join(lines)


def plot_dice_curves(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in records))
    if not datasets:
        return
    cols = min(3, len(datasets))
    rows = int(math.ceil(len(datasets) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, dataset in zip(axes.ravel(), datasets):
        rs = [r for r in records if r["dataset"] == dataset]
        for name in OrderedDict.fromkeys(r["method_name"] for r in rs):
            mine = [r for r in rs if r["method_name"] == name]
            cap = max(r["max_clicks"] for r in mine)
            curve = [np.mean([_after(r["dice"], k) for r in mine]) for k in range(cap + 1)]
            ax.plot(range(cap + 1), curve, marker="o", ms=3, label=name)
        ax.set_title(f"{dataset} (n={len({r['case'] for r in rs})})", fontsize=10)
        ax.set_xlabel("corrective clicks (0 = margin points only)")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[len(datasets):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(records: list[dict], path: Path) -> None:
    """Per data set (rows) and measure (columns: NoC@90, DSC AUC, final NSD, gain per
    click, share of the remaining error removed per click, share of the pointed error region
    fixed per click): one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in records))
    if not datasets:
        return
    measures = [("NoC@90", lambda rs: np.mean([r["noc90"] for r in rs])),
                ("DSC AUC (0-5)", lambda rs: np.mean([r["dsc_auc"] for r in rs])),
                ("final NSD 2 mm", lambda rs: _mean([r["nsd_final"] for r in rs])),
                ("Dice gain/click", lambda rs: step_statistics([r["dice"] for r in rs])[0]),
                ("error removed/click", lambda rs: error_removed_per_click([r["dice"] for r in rs])),
                ("share of the pointed error fixed", lambda rs: mean_fixed_share([r.get("fixed", []) for r in rs]))]
    fig, axes = plt.subplots(len(datasets), len(measures), figsize=(4.2 * len(measures), 2.6 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        rs = [r for r in records if r["dataset"] == dataset]
        names = list(OrderedDict.fromkeys(r["method_name"] for r in rs))
        for col, (title, value) in enumerate(measures):
            ax = axes[row, col]
            ax.barh(range(len(names)), [value([r for r in rs if r["method_name"] == n]) for n in names], color="tab:blue")
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if col == 0 else [""] * len(names), fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{dataset}: {title}" if col == 0 else title, fontsize=8)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlay(case: dict, image: np.ndarray, ref: np.ndarray, runs: list[tuple[Method, ProtocolResult]], path: Path) -> None:
    """Rows: methods; columns: after 0, 1, 5 clicks. 3D: the axial slice with the largest
    reference area (clicks on that slice drawn). Displayed transposed (LoadImage order is x, y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lib.transforms.crop import relaxed_box

    z = int(np.argmax(ref.sum(axis=(0, 1)))) if ref.ndim == 3 else None
    take = (lambda a: a[..., z]) if z is not None else (lambda a: a)
    margin = runs[0][1].margin_points
    box = relaxed_box(margin, ref.shape)
    pad = (box[1] - box[0]) // 4
    lo = np.maximum(box[0] - pad, 0)[:2]
    hi = np.minimum(box[1] + pad, ref.shape)[:2]
    view = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))

    def on_slice(points):
        pts = np.asarray(points, dtype=np.int64).reshape(-1, ref.ndim)
        if z is not None:
            pts = pts[pts[:, 2] == z]
        pts = pts[:, :2]
        inside = np.all((pts >= lo) & (pts < hi), axis=1)
        return pts[inside] - lo

    steps = [k for k in OVERLAY_STEPS if any(k in res.masks for _, res in runs)]
    fig, axes = plt.subplots(len(runs), len(steps), figsize=(3.2 * len(steps), 3.2 * len(runs)), squeeze=False)
    img = take(image)[view]
    reference = take(ref)[view]
    for row, (method, res) in enumerate(runs):
        for col, k in enumerate(steps):
            ax = axes[row, col]
            ax.imshow(img.T, cmap="gray", origin="upper")
            ax.contour(reference.T.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            if k in res.masks:
                mask = take(res.masks[k])[view]
                if mask.any():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors="red", linewidths=1.0)
            mp = on_slice(margin)
            ax.plot(mp[:, 0], mp[:, 1], "o", color="yellow", ms=4)
            clicks = res.clicks[:k]
            fg = on_slice([c["point"] for c in clicks if c["foreground"]])
            bg = on_slice([c["point"] for c in clicks if not c["foreground"]])
            ax.plot(fg[:, 0], fg[:, 1], "+", color="cyan", ms=8, mew=2)
            ax.plot(bg[:, 0], bg[:, 1], "x", color="magenta", ms=7, mew=2)
            dice_k = _after(res.dice, k)
            ax.set_title(f"{method.name}\n{k} click(s): Dice {dice_k:.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{case['dataset']}: {case['name']}" + (f" (slice {z})" if z is not None else "")
                 + "\ngreen reference, red result, yellow margin points, cyan + / magenta x clicks", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


def select_cases(cases: list[dict], max_cases: int | None) -> list[dict]:
    if not max_cases:
        return cases
    count: dict[str, int] = defaultdict(int)
    out = []
    for c in cases:
        if count[c["dataset"]] < max_cases:
            out.append(c)
            count[c["dataset"]] += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["shared"], help="built-in case list (../shared/data)")
    parser.add_argument("--images", type=Path, help="folder of images")
    parser.add_argument("--labels", type=Path, help="folder of reference labels (same file names or stems)")
    parser.add_argument("--label-values", type=float, nargs="+", help="label values that form the object (default: > 0)")
    parser.add_argument("--volumes", choices=["3d", "2d", "both"], default="3d", help="volumes in 3D and/or their largest slice in 2D")
    parser.add_argument("--dataset", help="data set name for --images (default: the folder name)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_KEYS), choices=list(METHOD_KEYS))
    parser.add_argument("--variant", action="append", default=[], metavar="SETTING",
                        help="also run MIDeepSeg set up by key=value,... (--conf keys of the task: refinement, "
                             "RefinementOptions fields; lamda/sigma), e.g. refinement=learned,learned_cut=gc")
    parser.add_argument("--max-cases", type=int, default=None, help="at most this many cases per data set")
    parser.add_argument("--clicks", type=int, default=None, help="corrective-click budget (default 20 in 2D, 10 in 3D)")
    parser.add_argument("--overlays", type=int, default=1, help="overlay figures for the first N cases of each data set")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "apps" / "midepseg" / "model")
    parser.add_argument("--ablation-dir", type=Path, help="cue ablation: also run MIDeepSeg with each midepseg_<dim>d_<cue>.pt found here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmark_clicks")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("monailabel", "monai", "lib", "configs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(max(1, args.threads))

    if args.preset == "shared":
        if not DATA.exists():
            parser.error(f"{DATA} not found")
        cases = preset_shared_cases(args.dims)
    elif args.images and args.labels:
        cases = [c for c in folder_cases(args.images, args.labels, args.label_values, args.volumes, args.dataset) if c["dim"] in args.dims]
    else:
        parser.error("give --preset shared or --images and --labels")
    cases = select_cases(cases, args.max_cases)
    methods, unavailable = build_methods(args.methods, args.dims, args.model_dir, args.device, ablation_dir=args.ablation_dir)
    methods += [midepseg_variant(dim, text, model_dir=args.model_dir, device=args.device) for text in args.variant for dim in args.dims]
    for key, why in unavailable.items():
        logger.warning("method %s skipped: %s", key, why)
    if not methods:
        parser.error("no method available")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overlays").mkdir(exist_ok=True)
    cache = _ArrayCache()
    total = sum(1 for c in cases for m in methods if m.supports(c["dim"]))
    records: list[dict] = []
    overlays_done: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    with tqdm(total=total, unit="run", dynamic_ncols=True) as bar:
        for case in cases:
            try:
                image, ref, spacing, k = load_case(case, cache)
            except Exception as e:  # unreadable file: report and go on
                logger.error("%s: %s, skipped", case["name"], e)
                bar.update(sum(1 for m in methods if m.supports(case["dim"])))
                continue
            usable = [m for m in methods if m.supports(case["dim"])]
            if not ref.any():
                logger.warning("%s: empty reference, skipped", case["name"])
                bar.update(len(usable))
                continue
            draw = overlays_done[case["dataset"]] < args.overlays
            cap = args.clicks if args.clicks is not None else DEFAULT_MAX_CLICKS[ref.ndim]
            runs = []
            for method in usable:
                bar.set_description(f"{case['dataset'][:22]} | {case['name'][:18]} | {method.name[:14]}")
                result = run_protocol(method, image, ref, spacing, cap, keep_masks=OVERLAY_STEPS if draw else ())
                records.append(make_record(case, method, result, ref.shape, spacing, k))
                runs.append((method, result))
                bar.update(1)
            if draw and runs:
                plot_overlay(case, image, ref, runs, args.out / "overlays" / f"{_safe(case['dataset'])}__{_safe(case['name'])}.png")
                overlays_done[case["dataset"]] += 1
    for method in methods:
        method.close()

    meta = {
        "methods": [{"key": m.key, "name": m.name, "dims": list(m.dims), "hard_constraints": m.hard_constraints} for m in methods],
        "unavailable": unavailable,
        "clicks": args.clicks,
        "max_cases": args.max_cases,
        "model_dir": str(args.model_dir),
        "device": args.device,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (args.out / "results.json").write_text(json.dumps({"config": meta, "records": records}, indent=1))
    write_csv(records, args.out / "results.csv")
    summary = summary_markdown(records, unavailable)
    (args.out / "summary.md").write_text(summary)
    plot_dice_curves(records, args.out / "dice_vs_clicks.png")
    plot_metrics(records, args.out / "metrics.png")
    print(summary)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
