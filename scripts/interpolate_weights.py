"""Interpolate two weights files of the same network (a model "soup", as in WiSE-FT): every
floating-point tensor becomes ``(1 - alpha) * base + alpha * tuned``; the other entries of the
files (the stored input grid) are carried over, and must agree where both files hold them.

Meant for a fine-tune and the weights it started from: the straight line between them stays
in one basin of the loss, and a point on it can keep what the base knew (a held-out type it
was good on) while taking part of what the fine-tune learned.

    python scripts/interpolate_weights.py apps/midepseg/model/midepseg_3d_generic.pt \\
        runs/ft23/midepseg_3d.pt --alpha 0.5 --out runs/soup/midepseg_3d_generic.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.trainers.handlers import save_atomic  # noqa: E402

logger = logging.getLogger("interpolate_weights")


def interpolate_state(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor of two state
    dicts with the same keys and shapes (computed in float32, stored in the base's dtype);
    integer tensors (counters) are taken from ``tuned``."""
    if set(base) != set(tuned):
        raise ValueError(f"the state dicts differ in keys: {sorted(set(base) ^ set(tuned))[:5]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = {}
    for key, a in base.items():
        b = tuned[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if a.is_floating_point():
            out[key] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype)
        else:
            out[key] = b.clone()
    return out


def interpolate_files(base_path: Path, tuned_path: Path, alpha: float, out: Path) -> None:
    """Write the interpolation of two weights files (``{"model": state_dict, ...}``) to
    ``out`` atomically; entries other than ``"model"`` are carried over from either file and
    must agree where both hold them."""
    base = torch.load(base_path, map_location="cpu", weights_only=True)
    tuned = torch.load(tuned_path, map_location="cpu", weights_only=True)
    extras = {k: v for k, v in tuned.items() if k != "model"}
    for key, value in base.items():
        if key == "model":
            continue
        if key in extras and extras[key] != value:
            raise ValueError(f"{key} differs: {value} in {base_path}, {extras[key]} in {tuned_path}")
        extras[key] = value
    save_atomic({"model": interpolate_state(base["model"], tuned["model"], alpha), **extras}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="weights file the fine-tune started from")
    parser.add_argument("tuned", type=Path, help="weights file of the fine-tune")
    parser.add_argument("--alpha", type=float, required=True, help="weight of the fine-tune (0: base, 1: fine-tune)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    interpolate_files(args.base, args.tuned, args.alpha, args.out)
    logger.info("wrote %s: %.2f x %s + %.2f x %s", args.out, 1 - args.alpha, args.base, args.alpha, args.tuned)


if __name__ == "__main__":
    main()
