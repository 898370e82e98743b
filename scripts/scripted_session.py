"""A robot annotator driving a live MIDeepSeg server through MONAI Label's own client.

For every sample image with a reference in apps/midepseg/sample_references it places the
interior margin points (extreme points of the reference, moved inwards), then corrective
clicks at the centre of the largest error, sending all points on every request as Slicer
and OHIF do, and prints Dice after each click.

    bash scripts/run_server.sh &      # then:
    .venv/bin/python scripts/scripted_session.py --url http://127.0.0.1:8000 --clicks 5
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.transforms import LoadImage  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402

from lib.metrics import dice  # noqa: E402
from lib.transforms.margin_points import extreme_margin_points  # noqa: E402
from lib.transforms.robot_user import corrective_click  # noqa: E402

logger = logging.getLogger("session")


def image_id(path: Path) -> str:
    return path.name.replace(".nii.gz", "").replace(".png", "")


def annotate(client: MONAILabelClient, reference: Path, clicks: int) -> list[float]:
    loader = LoadImage(image_only=True)
    ref_img = loader(str(reference))
    ref = np.asarray(ref_img) > 0
    spacing = np.asarray(ref_img.pixdim)[: ref.ndim]
    model = "midepseg_2d" if ref.ndim == 2 else "midepseg_3d"
    fg = extreme_margin_points(ref, spacing).tolist()
    bg: list = []
    scores = []
    for step in range(clicks + 1):
        params = {"foreground": fg, "background": bg, "result_extension": ".nii.gz", "result_dtype": "uint8"}
        start = time.perf_counter()
        result_file, _ = client.infer(model, image_id(reference), params)
        elapsed = time.perf_counter() - start
        try:
            pred = np.asarray(loader(result_file)) > 0
        finally:
            Path(result_file).unlink(missing_ok=True)
        scores.append(dice(pred, ref))
        what = "margin points" if step == 0 else f"click {step}"
        logger.info("%-12s %-14s %-13s Dice %.4f  (%.2f s)", image_id(reference), model, what, scores[-1], elapsed)
        click = corrective_click(pred, ref, spacing, np.asarray(fg + bg).reshape(-1, ref.ndim))
        if click is None or step == clicks:
            break
        point, is_fg = click
        (fg if is_fg else bg).append(point.tolist())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clicks", type=int, default=5, help="corrective clicks after the margin points")
    parser.add_argument("--references", type=Path, default=ROOT / "apps" / "midepseg" / "sample_references")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A private download folder: the server deletes its result file (named like the client's
    # copy) after sending it, which would race with the client's copy in a shared /tmp.
    client = MONAILabelClient(args.url, tmpdir=tempfile.mkdtemp(prefix="midepseg-session-"))
    info = client.info()
    logger.info("server %s: models %s", args.url, ", ".join(info["models"]))
    for reference in sorted(args.references.iterdir()):
        if reference.name.endswith((".png", ".nii.gz")):
            annotate(client, reference, args.clicks)


if __name__ == "__main__":
    main()
