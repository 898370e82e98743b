#!/usr/bin/env python
"""Per-click latency of the MIDeepSeg app over MONAI Label's REST API.

Two cases, each: the first stage-1 request (the interior margin points of the reference,
``extreme_margin_points``; a cold image: load + EGD + network), then ``--clicks`` robot
corrective clicks (``corrective_click``), every request resending all points as Slicer and
OHIF do:

* 2D: a 512x512 slice (an HC18 ultrasound image, square crop around the head resized to
  512x512, with its label), ``midepseg_2d``;
* 3D: the BraTS volume ``brats_2013_pat0003_1`` T1c (240x240x155, LPS), tumour core =
  labels {1, 3, 4} of ``OTMultiClass``, ``midepseg_3d``.

Prints one table per case: wall time of each request as the client sees it, the server's
per-stage timing from the result JSON (load, egd, network, fusion, graph_cut, restore,
write), and the Dice after each request; medians and maxima over the refinement clicks; then,
per model, the median, 90th percentile and slowest of all its cases' clicks together
(``--hc18-case`` repeated gives one 2D case per image, e.g. the first ten HC18 images for 100
2D clicks). With
``--worst-case``, also the most expensive request the app accepts, with nothing cached: new
margin points (moved one voxel) and the per-request limit of refinement clicks
(``lib.edge.params``), half foreground inside the object and half background outside it
in its box. Asserts nothing about time.

Without ``--url`` it starts a server (``monailabel start_server``) on a temporary copy of
``--studies`` (empty when not given) plus the two benchmark images, with ``--conf model_dir``
in a temporary folder (the shipped weights are copied there, never written), and stops it
at the end. With ``--url`` it uploads the two images to that server's datastore.

Usage::

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python scripts/benchmark_server.py [--clicks 5] [--url URL] [--conf KEY VALUE]

``--volume IMAGE LABEL`` (repeatable) adds a 3D case of your own (a NIfTI image and its binary
label of the same grid), e.g. a large object whose relaxed box exceeds the BraTS tumour's.

``--conf`` settings go to the server this script starts (e.g. ``--conf work_voxels 25600``
for the 2D work grid before session 9, ``--conf stage1_ensemble none`` for the 3D network
alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.app_server import start_app_server  # noqa: E402
from lib.edge.params import MAX_REFINEMENT_CLICKS  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.processes import free_port, stop_group  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from lib.transforms.robot_user import corrective_click  # noqa: E402

log = logging.getLogger("benchmark_server")

STAGES = ("load", "egd", "network", "fusion", "graph_cut", "refinement", "restore", "write")
BRATS_CASE = "brats_2013_pat0003_1"
TUMOUR_CORE = (1, 3, 4)


# ---------------------------------------------------------------------------- data


def make_2d_case(data: Path, case: str, out_image: Path, out_label: Path, size: int = 512) -> None:
    """Square crop (the image's height) of an HC18 image centred on the head, resized to
    ``size`` x ``size`` (bilinear image, nearest label), saved as 8-bit PNGs."""
    from PIL import Image

    image = Image.open(data / "hc18" / "images" / f"{case}.png").convert("L")
    label = Image.open(data / "hc18" / "labels" / f"{case}.png")
    width, height = image.size
    cols = np.nonzero(np.asarray(label).any(axis=0))[0]
    centre = (cols.min() + cols.max()) // 2 if len(cols) else width // 2
    side = min(width, height)
    left = int(np.clip(centre - side // 2, 0, width - side))
    box = (left, 0, left + side, side)
    image.crop(box).resize((size, size), Image.BILINEAR).save(out_image)
    lab = (np.asarray(label.crop(box).resize((size, size), Image.NEAREST)) > 0).astype(np.uint8)
    Image.fromarray(lab).save(out_label)


def make_3d_case(data: Path, out_image: Path, out_label: Path) -> None:
    import nibabel as nib

    case = data / "brats" / BRATS_CASE
    shutil.copy(case / "T1c_subtrMeanDivStd.nii.gz", out_image)
    ot = nib.load(str(case / "OTMultiClass.nii.gz"))
    core = np.isin(np.asarray(ot.dataobj), TUMOUR_CORE).astype(np.uint8)
    nib.save(nib.Nifti1Image(core, ot.affine), str(out_label))


def load(path: Path):
    """Array (LoadImage axes: the server's point axes) and voxel spacing."""
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(path))
    arr = np.asarray(img)
    return arr, np.asarray(img.pixdim, dtype=np.float64)[: arr.ndim]


# ---------------------------------------------------------------------------- server


# ---------------------------------------------------------------------------- benchmark


def infer(client, model: str, image_id: str, foreground, background):
    from monai.transforms import LoadImage

    params = {
        "foreground": np.asarray(foreground, dtype=np.int64).tolist(),
        "background": np.asarray(background, dtype=np.int64).tolist(),
        "result_extension": ".nrrd",
        "result_dtype": "uint8",
    }
    start = time.perf_counter()
    path, result = client.infer(model, image_id, params)
    wall = time.perf_counter() - start
    try:
        mask = np.asarray(LoadImage(image_only=True)(path)) > 0
    finally:
        os.unlink(path)
    return mask, result, wall


def run_case(client, name: str, model: str, image_id: str, reference: np.ndarray, spacing, clicks: int) -> list[dict]:
    """Stage 1 then ``clicks`` robot clicks; one row per request."""
    margin = extreme_margin_points(reference, spacing)
    foreground, background = [p for p in margin], []
    rows = []
    mask, result, wall = infer(client, model, image_id, foreground, background)
    rows.append({"request": f"stage 1 ({len(margin)} margin pts)", "wall": wall, "result": result, "dice": dice(mask, reference)})
    log.info("%s: %s wall %.3f s Dice %.4f", name, rows[-1]["request"], wall, rows[-1]["dice"])
    for i in range(clicks):
        click = corrective_click(mask, reference, spacing, np.array(foreground + background))
        if click is None:
            log.info("%s: no error left after %d clicks", name, i)
            break
        point, is_fg = click
        (foreground if is_fg else background).append(point)
        mask, result, wall = infer(client, model, image_id, foreground, background)
        rows.append(
            {"request": f"click {i + 1} ({'fg' if is_fg else 'bg'})", "wall": wall, "result": result, "dice": dice(mask, reference)}
        )
        log.info("%s: %s wall %.3f s Dice %.4f", name, rows[-1]["request"], wall, rows[-1]["dice"])
    return rows


def worst_case(client, model: str, image_id: str, reference: np.ndarray, spacing, seed: int = 0) -> dict:
    """The most expensive documented request, cold (see the module doc); one row."""
    rng = np.random.default_rng(seed)
    top = np.asarray(reference.shape) - 1
    margin = np.clip(extreme_margin_points(reference, spacing) + 1, 0, top)
    each = MAX_REFINEMENT_CLICKS[reference.ndim] // 2
    idx = np.argwhere(reference)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    outside = np.argwhere(~reference[box]) + idx.min(0)
    fg = idx[rng.choice(len(idx), each, replace=False)]
    bg = outside[rng.choice(len(outside), each, replace=False)]
    mask, result, wall = infer(client, model, image_id, np.concatenate([margin, fg]), bg)
    return {"request": f"cold, {each} fg + {each} bg clicks", "wall": wall, "result": result, "dice": dice(mask, reference)}


def format_table(name: str, shape, rows: list[dict]) -> str:
    header = ["request", "wall"] + list(STAGES) + ["server", "cached", "Dice"]
    lines = [f"{name}  image {tuple(int(s) for s in shape)}  (seconds)", ""]
    widths = [24] + [9] * (len(header) - 1)

    def line(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines.append(line(header))
    lines.append(line(["-" * w for w in widths]))
    for r in rows:
        timing = r["result"].get("timing", {})
        cells = [r["request"], fmt(r["wall"])] + [fmt(timing.get(s)) for s in STAGES]
        cells += [fmt(sum(timing.get(s, 0.0) for s in STAGES)), str(r["result"].get("stage1_cached")), f"{r['dice']:.4f}"]
        lines.append(line(cells))
    clicks = [r for r in rows if r["request"].startswith("click")]
    if clicks:
        lines.append(line(["-" * w for w in widths]))
    for label, summary in (("median", statistics.median), ("slowest", max)) if clicks else ():
        def over_clicks(values):  # per column: the summary over the clicks that have a value
            values = [v for v in values if v is not None]
            return summary(values) if values else None

        cells = [f"{label} of {len(clicks)} clicks", fmt(over_clicks([r["wall"] for r in clicks]))]
        cells += [fmt(over_clicks([r["result"].get("timing", {}).get(s) for r in clicks])) for s in STAGES]
        cells += [fmt(over_clicks([sum(r["result"].get("timing", {}).get(s, 0.0) for s in STAGES) for r in clicks])), "", ""]
        lines.append(line(cells))
    return "\n".join(lines)


def pooled_summary(rows_by_model: dict[str, list[dict]]) -> str:
    """Per model, the wall time of every refinement click of its cases together: count,
    median, 90th percentile and slowest (seconds)."""
    lines = ["refinement clicks over REST, all cases of a model (wall, seconds)"]
    for model, rows in rows_by_model.items():
        walls = [r["wall"] for r in rows if r["request"].startswith("click")]
        if walls:
            lines.append(f"{model}: {len(walls)} clicks, median {statistics.median(walls):.3f}, "
                         f"p90 {float(np.percentile(walls, 90)):.3f}, slowest {max(walls):.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this running server (the images are uploaded to its datastore)")
    parser.add_argument("--studies", type=Path, help="studies folder to copy into the temporary one (default: none)")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="development data folder")
    parser.add_argument("--hc18-case", action="append", metavar="NAME",
                        help="HC18 image for a 2D case (repeatable: one case each; default 800_HC)")
    parser.add_argument("--clicks", type=int, default=5, help="robot refinement clicks per case")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--worst-case", action="store_true", help="also the most expensive accepted request, cold")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a server --conf setting for the server this script starts (e.g. --conf work_voxels 10000)")
    parser.add_argument("--volume", nargs=2, action="append", default=[], type=Path, metavar=("IMAGE", "LABEL"),
                        help="also a 3D case of your own: a NIfTI image and its binary label (label > 0)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    from monailabel.client import MONAILabelClient

    tmp = Path(tempfile.mkdtemp(prefix="midepseg_bench_"))
    studies, refs = tmp / "studies", tmp / "refs"
    if args.studies:
        shutil.copytree(args.studies, studies, ignore=shutil.ignore_patterns("labels", "datastore_v2.json", ".lock"))
    else:
        studies.mkdir()
    refs.mkdir()
    cases = []
    for k, hc18 in enumerate(args.hc18_case or ["800_HC"]):
        image_id = "bench_hc18_512" + (f"_{k}" if k else "")
        make_2d_case(args.data, hc18, studies / f"{image_id}.png", refs / f"{image_id}.png")
        cases.append(("2D slice 512x512 (HC18 %s), midepseg_2d" % hc18, "midepseg_2d", image_id, ".png"))
    cases.append(("3D volume 240x240x155 (BraTS %s T1c, tumour core)" % BRATS_CASE, "midepseg_3d", "bench_brats_t1c", ".nii.gz"))
    make_3d_case(args.data, studies / "bench_brats_t1c.nii.gz", refs / "bench_brats_t1c.nii.gz")
    for k, (image, label) in enumerate(args.volume):
        image_id = f"bench_volume_{k}"
        shutil.copy(image, studies / f"{image_id}.nii.gz")
        shutil.copy(label, refs / f"{image_id}.nii.gz")
        cases.append((f"3D volume {image.name}", "midepseg_3d", image_id, ".nii.gz"))

    server = None
    try:
        if args.url:
            url = args.url.rstrip("/")
            client = MONAILabelClient(url, tmpdir=str(tmp))
            for _, _, image_id, ext in cases:
                client.upload_image(str(studies / f"{image_id}{ext}"), image_id)
        else:
            port = free_port()
            server, seconds = start_app_server(studies, port, tmp / "server.log", conf={"model_dir": str(tmp / "model"), **dict(args.conf)},
                                               timeout=300)
            log.info("server up in %.1f s (log %s)", seconds, tmp / "server.log")
            url = f"http://127.0.0.1:{port}"
            client = MONAILabelClient(url, tmpdir=str(tmp))
        info = client.info()
        log.info("models: %s", sorted(info["models"]))

        tables, results, rows_by_model = [], {}, {}
        for name, model, image_id, ext in cases:
            reference_raw, spacing = load(refs / f"{image_id}{ext}")
            reference = reference_raw > 0
            rows = run_case(client, name, model, image_id, reference, spacing, args.clicks)
            if args.worst_case:
                rows.append(worst_case(client, model, image_id, reference, spacing))
            tables.append(format_table(name, reference.shape, rows))
            results[name] = rows
            rows_by_model.setdefault(model, []).extend(rows)
        print(f"\nMIDeepSeg over REST ({url}); wall = client round trip (request, server, result file received and written)")
        for t in tables:
            print("\n" + t)
        print("\n" + pooled_summary(rows_by_model))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=float))
    finally:
        if server is not None:
            stop_group(server)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
