"""Benchmark measures over robot-user runs (:class:`lib.benchmark.protocol.ProtocolResult`).

Beside NoC@85/90, the measures of the CVPR 2025 interactive 3D medical segmentation
challenge ("Foundation models for interactive 3D biomedical image segmentation"):

* DSC AUC: area under the Dice-vs-interaction curve over the first interaction (margin
  points here, a box there) and 5 corrective clicks, trapezoid rule with unit steps
  (range 0-5);
* final Dice, and final NSD (normalised surface Dice) at a 2 mm tolerance, after the
  budget of clicks;

and the click statistics of issue 10: the mean Dice gain per click, the mean share of the
remaining error (1 - Dice) a click removes (a method that starts higher has less to gain: this
compares clicks across starting points), the share of clicks that lower Dice by more than
0.01, the share of clicks that change Dice by less than 0.0001 (issue 10's complaint:
"mostly nothing happens"), and the mean share of the error region a click points at that it
fixes (issue 10's title: "every refinement click must fix what it points at").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

AUC_CLICKS = 5
NSD_TOLERANCE_MM = 2.0
WORSE_BY = 0.01
UNCHANGED_BELOW = 1e-4  # a click that moves Dice by less than this changed (almost) nothing


def padded_dice(dices: Sequence[float], clicks: int) -> np.ndarray:
    """Dice after 0..``clicks`` clicks; a run that stopped early (nothing left to click)
    keeps its last value."""
    values = list(dices)[: clicks + 1]
    return np.asarray(values + [values[-1]] * (clicks + 1 - len(values)), dtype=np.float64)


def dsc_auc(dices: Sequence[float], clicks: int = AUC_CLICKS) -> float:
    """Area under Dice over interactions 0..``clicks`` (trapezoid rule, unit spacing)."""
    d = padded_dice(dices, clicks)
    return float(np.sum((d[1:] + d[:-1]) / 2.0))


def normalised_surface_dice(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None,
                            tolerance: float = NSD_TOLERANCE_MM) -> float:
    """NSD (Nikolov et al.): the share of both surfaces within ``tolerance`` mm of the
    other, by MONAI's ``compute_surface_dice``; 1 for two empty masks, 0 when one is empty."""
    import torch
    from monai.metrics import compute_surface_dice

    m, r = np.asarray(mask) > 0, np.asarray(reference) > 0
    if not m.any() and not r.any():
        return 1.0
    if not m.any() or not r.any():
        return 0.0
    idx = np.argwhere(m | r)
    box = tuple(slice(max(int(a) - 2, 0), int(b) + 3) for a, b in zip(idx.min(0), idx.max(0)))
    onehot = [torch.as_tensor(np.stack([~x[box], x[box]])[None].astype(np.float32)) for x in (m, r)]
    sp = None if spacing is None else [float(s) for s in spacing]
    value = compute_surface_dice(onehot[0], onehot[1], [tolerance], include_background=False, spacing=sp)
    return float(value.reshape(-1)[0])


def step_statistics(dice_curves: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(mean Dice change per click, share of clicks that lower Dice by more than
    WORSE_BY)`` over runs, each a Dice curve (index 0: the margin points); ``(0, 0)`` when no
    click was made."""
    steps = np.concatenate([np.diff(np.asarray(d, dtype=np.float64)) for d in dice_curves] or [np.zeros(0)])
    if not len(steps):
        return 0.0, 0.0
    return float(steps.mean()), float(np.mean(steps < -WORSE_BY))


def unchanged_share(dice_curves: Sequence[Sequence[float]], below: float = UNCHANGED_BELOW) -> float:
    """Share of all runs' clicks (each run a Dice curve, index 0: the margin points) that change
    Dice by less than ``below`` either way; 0 when no click was made."""
    steps = np.concatenate([np.diff(np.asarray(d, dtype=np.float64)) for d in dice_curves] or [np.zeros(0)])
    return float(np.mean(np.abs(steps) < below)) if len(steps) else 0.0


def error_removed_per_click(dice_curves: Sequence[Sequence[float]]) -> float:
    """Mean over the clicks of all runs (each a Dice curve, index 0: the margin points) of
    ``(Dice after - Dice before) / (1 - Dice before)``: the share of the remaining error a click
    removes (negative when it adds error); clicks made at Dice 1 are left out; 0 when no click
    counts."""
    shares = []
    for curve in dice_curves:
        d = np.asarray(curve, dtype=np.float64)
        before, after = d[:-1], d[1:]
        room = 1.0 - before
        shares.append(((after - before) / np.where(room > 0, room, 1.0))[room > 0])
    values = np.concatenate(shares or [np.zeros(0)])
    return float(values.mean()) if len(values) else 0.0


def pointed_error_region(mask: np.ndarray, reference: np.ndarray, point: Sequence[int], foreground: bool) -> np.ndarray:
    """The error region a click points at: the connected component (face connectivity) of the
    mask's error of the click's kind (missed object for a foreground click, wrongly included
    background for a background one) that holds the clicked voxel; all False when the click
    lies on no such error.

    Args:
        mask, reference: binary arrays of one shape, ``(H, W)`` or ``(H, W, D)``.
        point: the clicked voxel's indices.
        foreground: the click's kind.
    """
    m, r = np.asarray(mask) > 0, np.asarray(reference) > 0
    error = (r & ~m) if foreground else (m & ~r)
    labels, _ = ndimage.label(error)
    index = labels[tuple(int(v) for v in point)]
    return labels == index if index else np.zeros(error.shape, dtype=bool)


def fixed_share(region: np.ndarray, result: np.ndarray, reference: np.ndarray) -> float:
    """Share of ``region`` (a click's :func:`pointed_error_region`) that ``result``, the mask
    after the click, labels as ``reference`` does; NaN for an empty region."""
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return float("nan")
    right = (np.asarray(result) > 0) == (np.asarray(reference) > 0)
    return float(right[region].mean())


def mean_fixed_share(per_run: Sequence[Sequence[float | None]]) -> float:
    """Mean of the clicks' :func:`fixed_share` over all runs (``None``/NaN entries left out);
    NaN when no click counts."""
    values = [float(v) for run in per_run for v in run if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def click_statistics(results, clicks: int) -> dict:
    """Means over runs: Dice after 0/1/3/5/10 clicks (those within ``clicks``), NoC@85/90,
    DSC AUC, the mean Dice gain per click, the mean share of the remaining error a click
    removes, the share of clicks that lower Dice by more than 0.01, the share that change it by
    less than 0.0001, the mean share of its error region a click fixes, and the mean wall time
    of a click (s)."""
    curves = np.stack([padded_dice(r.dice, clicks) for r in results])
    out = {f"dice{k}": float(curves[:, k].mean()) for k in (0, 1, 3, 5, 10) if k <= clicks}
    out["noc85"] = float(np.mean([r.noc(0.85) for r in results]))
    out["noc90"] = float(np.mean([r.noc(0.90) for r in results]))
    out["dsc_auc"] = float(np.mean([dsc_auc(r.dice) for r in results]))
    out["gain_per_click"], out["worse_fraction"] = step_statistics([r.dice for r in results])
    out["error_removed_per_click"] = error_removed_per_click([r.dice for r in results])
    out["unchanged_fraction"] = unchanged_share([r.dice for r in results])
    out["fixed_share"] = mean_fixed_share([r.fixed for r in results])
    out["click_seconds"] = float(np.mean([t for r in results for t in r.latency[1:]] or [0.0]))
    return out
