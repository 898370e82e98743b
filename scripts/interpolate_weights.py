"""Interpolate two weights files of the same network (a model "soup", as in WiSE-FT): every
floating-point tensor becomes ``(1 - alpha) * base + alpha * tuned``; the other entries of the
file (the stored input grid) are the base file's, and must agree between the two.

Meant for a fine-tune and the weights it started from: the straight line between them stays
in one basin of the loss, and a point on it can keep what the base knew (a held-out type it
was good on) while taking part of what the fine-tune learned.

    python scripts/interpolate_weights.py apps/midepseg/model/midepseg_3d_generic.pt \\
        runs/ft23/midepseg_3d.pt --alpha 0.5 --out runs/soup/midepseg_3d_generic.pt
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

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
            out[key] = ((1.0 - alpha) * a.float() + alpha * b.float()).to(a.dtype)
        else:
            out[key] = b.clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="weights file the fine-tune started from")
    parser.add_argument("tuned", type=Path, help="weights file of the fine-tune")
    parser.add_argument("--alpha", type=float, required=True, help="weight of the fine-tune (0: base, 1: fine-tune)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    base = torch.load(args.base, map_location="cpu", weights_only=True)
    tuned = torch.load(args.tuned, map_location="cpu", weights_only=True)
    extras = {k: v for k, v in base.items() if k != "model"}
    for key, value in extras.items():
        if key in tuned and tuned[key] != value:
            raise SystemExit(f"{key} differs: {value} in {args.base}, {tuned[key]} in {args.tuned}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": interpolate_state(base["model"], tuned["model"], args.alpha), **extras}, args.out)
    logger.info("wrote %s: %.2f x %s + %.2f x %s", args.out, 1 - args.alpha, args.base, args.alpha, args.tuned)


if __name__ == "__main__":
    main()
