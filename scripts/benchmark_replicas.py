#!/usr/bin/env python
"""Throughput and tail latency of one against two app replicas behind nginx (issue 12).

The sample CT goes as a DICOM series into a fresh Orthanc; for each replica count (default 1
and 2) the replicas start over it with one shared model folder (``lib/replicas.py``) and are
warmed up (each fetches the series and answers once); then ``--annotators`` robot annotators
at once, each through the proxy, run ``--sessions`` sessions on the spleen with
``midepseg_3d``: the interior margin points, then ``--clicks`` corrective clicks, every
request resending all points (as Slicer and OHIF do). Each session moves its margin points
by a voxel, so that no two sessions share a cached stage 1.

Prints per replica count: requests, wall seconds, throughput (requests/s), median and p99
request latency, and the ratio of the two counts' throughput and p99. Asserts nothing.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python scripts/benchmark_replicas.py [--replicas 1 2] [--annotators 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.benchmark.protocol import robot_click  # noqa: E402
from lib.dicomweb.orthanc import OrthancServer  # noqa: E402
from lib.dicomweb.series import write_ct_series  # noqa: E402
from lib.dicomweb.stack import SAMPLE_CT, SAMPLE_SPLEEN  # noqa: E402
from lib.metrics import dice  # noqa: E402
from lib.replicas import replica_set  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402

logger = logging.getLogger("benchmark_replicas")


def _request(url: str, series: str, fg, bg, folder: Path) -> tuple[np.ndarray, float]:
    from monai.transforms import LoadImage
    from monailabel.client import MONAILabelClient

    params = {"foreground": np.asarray(fg).tolist(), "background": np.asarray(bg).reshape(-1, 3).tolist(),
              "result_extension": ".nii.gz", "result_dtype": "uint8"}
    start = time.perf_counter()
    path, _ = MONAILabelClient(url, tmpdir=str(folder)).infer("midepseg_3d", series, params)
    seconds = time.perf_counter() - start
    mask = np.asarray(LoadImage(image_only=True)(path)) > 0
    Path(path).unlink()
    return mask, seconds


def annotate(url: str, series: str, reference: np.ndarray, spacing: np.ndarray, clicks: int, shift: int,
             folder: Path, latencies: list, dices: list) -> None:
    """One robot session: margin points (moved by ``shift`` voxels along the first axis), then clicks."""
    margin = extreme_margin_points(reference, spacing)
    margin[:, 0] = np.clip(margin[:, 0] + shift, 0, reference.shape[0] - 1)
    fg, bg = margin, np.zeros((0, 3), np.int64)
    mask, seconds = _request(url, series, fg, bg, folder)
    latencies.append(seconds)
    for _ in range(clicks):
        click = robot_click(mask, reference, spacing, np.concatenate([fg, bg]))
        if click is None:
            break
        point, is_fg = click
        fg, bg = (np.r_[fg, point[None]], bg) if is_fg else (fg, np.r_[bg, point[None]])
        mask, seconds = _request(url, series, fg, bg, folder)
        latencies.append(seconds)
    dices.append(dice(mask, reference))


def run(count: int, args, pacs: OrthancServer, series: str, reference, spacing, work: Path) -> dict:
    with replica_set(pacs.dicomweb_url, count, work / f"models_{count}", work / f"servers_{count}") as running:
        margin = extreme_margin_points(reference, spacing)
        for replica in running.replicas:  # each fetches the series once and loads its networks
            _request(replica.url, series, margin, np.zeros((0, 3)), work)
        latencies: list[float] = []
        dices: list[float] = []
        errors: list[str] = []

        def annotator(k: int) -> None:
            folder = work / f"client_{count}_{k}"
            folder.mkdir(exist_ok=True)
            try:
                for s in range(args.sessions):
                    annotate(running.url, series, reference, spacing, args.clicks, 1 + k * args.sessions + s,
                             folder, latencies, dices)
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                errors.append(f"annotator {k}: {e}")

        with ThreadPoolExecutor(args.annotators) as pool:
            start = time.perf_counter()
            list(pool.map(annotator, range(args.annotators)))
            wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"replicas": count, "requests": len(lat), "errors": errors, "wall_s": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 3), "median_s": round(float(np.median(lat)), 3),
            "p99_s": round(float(np.percentile(lat, 99)), 3), "mean_dice": round(float(np.mean(dices)), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=2, help="sessions per annotator")
    parser.add_argument("--clicks", type=int, default=4, help="corrective clicks per session")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    logging.getLogger("monailabel.client").setLevel(logging.WARNING)  # one line per request otherwise

    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="bench_replicas_") as tmp:
        work = Path(tmp)
        geometry = write_ct_series(SAMPLE_CT, work / "dicom")
        reference = geometry.on_series_grid(np.asarray(nib.load(str(SAMPLE_SPLEEN)).dataobj) > 0)
        spacing = geometry.spacing
        with OrthancServer(work / "orthanc") as pacs:
            pacs.upload(geometry.files)
            results = [run(n, args, pacs, geometry.series_uid, reference, spacing, work) for n in args.replicas]

    print(f"\n{args.annotators} robot annotators at once, {args.sessions} sessions each (3D spleen, margin points + "
          f"{args.clicks} clicks), through nginx:\n")
    print("| replicas | requests | wall (s) | throughput (req/s) | median (s) | p99 (s) | mean Dice | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['replicas']} | {r['requests']} | {r['wall_s']} | {r['throughput_rps']} | {r['median_s']} | "
              f"{r['p99_s']} | {r['mean_dice']} | {len(r['errors'])} |")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"\nthroughput ratio {b['replicas']} : {a['replicas']} replicas = {b['throughput_rps'] / a['throughput_rps']:.2f}; "
              f"p99 ratio = {b['p99_s'] / a['p99_s']:.2f}")
    for r in results:
        for e in r["errors"]:
            print("error:", e)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
