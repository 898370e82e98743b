"""The robot-user protocol of the benchmark.

For one object (image + binary reference) and one method:

1. deterministic interior margin points from the reference
   (:func:`lib.transforms.margin_points.extreme_margin_points`), one interaction;
2. up to ``max_clicks`` corrective clicks (default 20 in 2D, 10 in 3D), each placed by
   :func:`lib.transforms.robot_user.corrective_click` at the interior-most voxel of the
   largest error region of the current result, never on a voxel clicked before (margin
   points included); the run stops early only when no error voxel is left to click;
3. Dice and ASSD after the margin points and after every click, the share of the error region
   each click points at that the next result fixes, and the wall time of each interaction (the
   method's ``segment`` call only; metrics and the robot are not timed).

Every method sees exactly the same margin points; the corrective clicks depend on the
method's own results, as for a real user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lib.metrics import assd, dice
from lib.transforms.margin_points import extreme_margin_points
from lib.transforms.robot_user import corrective_click

from .methods import Method
from .metrics import fixed_share, normalised_surface_dice, pointed_error_region

DEFAULT_MAX_CLICKS = {2: 20, 3: 10}
NOC_THRESHOLDS = (0.85, 0.90)


def number_of_clicks(dices: Sequence[float], threshold: float, cap: int) -> int:
    """Number of corrective clicks needed to reach ``threshold`` Dice (NoC@threshold).

    Args:
        dices: Dice after the margin points (index 0) and after each corrective click
            (index k = after k clicks).
        threshold: the Dice to reach, e.g. 0.85 or 0.9.
        cap: the click budget; returned when the threshold is never reached within it.

    Returns:
        The smallest ``k <= cap`` with ``dices[k] >= threshold`` (0 when the margin points
        alone suffice), else ``cap``. Entries after index ``cap`` are ignored.

    Examples:
        >>> number_of_clicks([0.7, 0.8, 0.86, 0.91], 0.85, 20)
        2
        >>> number_of_clicks([0.7, 0.8], 0.9, 20)
        20
        >>> number_of_clicks([0.95, 0.5], 0.9, 20)
        0
    """
    if cap < 0:
        raise ValueError(f"number_of_clicks: cap must be >= 0, got {cap}")
    for k, value in enumerate(list(dices)[: cap + 1]):
        if value is not None and np.isfinite(value) and value >= threshold:
            return k
    return int(cap)


def _union_box(a: np.ndarray, b: np.ndarray, pad: int = 2) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by ``pad`` voxels (clipped to the image)."""
    idx = np.argwhere(a | b)
    if len(idx) == 0:
        return tuple(slice(0, 0) for _ in a.shape)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, a.shape)
    return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))


def evaluate(mask: np.ndarray, reference: np.ndarray, spacing: np.ndarray,
             box: tuple[slice, ...] | None = None) -> tuple[float, float]:
    """``(Dice, ASSD)``, computed on the bounding box of both masks (same values as on the
    whole image, much faster on large volumes); ``box``: that box when already known."""
    m, r = np.asarray(mask) > 0, np.asarray(reference) > 0
    box = _union_box(m, r) if box is None else box
    return dice(m[box], r[box]), assd(m[box], r[box], spacing)


def robot_click(mask: np.ndarray, reference: np.ndarray, spacing: np.ndarray, clicked: np.ndarray,
                box: tuple[slice, ...] | None = None):
    """:func:`corrective_click` evaluated on the bounding box of both masks grown by 2 voxels
    (``box``: that box when already known): every error voxel lies inside and no error region
    touches the box's own faces (unless it touches the image's), so the click is the one the
    whole image gives."""
    m, r = np.asarray(mask) > 0, np.asarray(reference) > 0
    box = _union_box(m, r) if box is None else box
    lo = np.asarray([s.start for s in box], dtype=np.int64)
    hi = np.asarray([s.stop for s in box], dtype=np.int64)
    pts = np.asarray(clicked, dtype=np.int64).reshape(-1, r.ndim)
    pts = pts[np.all((pts >= lo) & (pts < hi), axis=1)] - lo
    click = corrective_click(m[box], r[box], spacing, pts)
    if click is None:
        return None
    point, is_fg = click
    return point + lo, is_fg


@dataclass
class ProtocolResult:
    """One robot-user run.

    Attributes:
        margin_points: ``(N, ndim)`` the margin points given first.
        clicks: the corrective clicks in order, ``{"point": [..], "foreground": bool}``.
        dice, assd, latency: one entry per interaction (index 0: margin points, k: after
            click k); ASSD is ``inf`` when the result is empty.
        fixed: per click, the share of the error region it points at
            (:func:`lib.benchmark.metrics.pointed_error_region`) that the result after it
            labels right.
        masks: result masks kept for the interactions listed in ``keep_masks``.
        stopped_early: no error voxel was left to click before the budget was spent.
        max_clicks: the click budget.
        nsd_final: normalised surface Dice (2 mm) of the last result
            (:func:`lib.benchmark.metrics.normalised_surface_dice`).
    """

    margin_points: np.ndarray
    clicks: list[dict] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    assd: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    fixed: list[float] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    stopped_early: bool = False
    max_clicks: int = 0
    nsd_final: float = float("nan")

    def dice_after(self, k: int) -> float:
        """Dice after ``k`` clicks; a run that stopped early keeps its last value."""
        return self.dice[min(k, len(self.dice) - 1)]

    def noc(self, threshold: float) -> int:
        return number_of_clicks(self.dice, threshold, self.max_clicks)


def run_protocol(
    method: Method,
    image: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | None = None,
    max_clicks: int | None = None,
    keep_masks: Sequence[int] = (),
    margin_points: np.ndarray | None = None,
) -> ProtocolResult:
    """Run the robot user on ``method`` for one object.

    Args:
        method: the method under test.
        image: spatial image ``(H, W)`` or ``(H, W, D)``.
        reference: binary reference mask of the same shape (non-empty).
        spacing: physical voxel size (mm); ones when omitted. Used by the margin points, the
            robot (interior-most voxel in mm), ASSD and the methods.
        max_clicks: corrective-click budget (default 20 in 2D, 10 in 3D).
        keep_masks: interactions whose result to keep in ``masks`` (e.g. ``(0, 1, 5)``).
        margin_points: override the deterministic margin points.
    """
    img = np.asarray(image)
    ref = np.asarray(reference) > 0
    if img.shape != ref.shape:
        raise ValueError(f"protocol: image {img.shape} and reference {ref.shape} differ in shape")
    ndim = ref.ndim
    sp = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    cap = DEFAULT_MAX_CLICKS[ndim] if max_clicks is None else int(max_clicks)
    margin = extreme_margin_points(ref, sp) if margin_points is None else np.asarray(margin_points, dtype=np.int64).reshape(-1, ndim)
    result = ProtocolResult(margin_points=margin, max_clicks=cap)
    keep = set(int(k) for k in keep_masks)
    fg = np.zeros((0, ndim), dtype=np.int64)
    bg = np.zeros((0, ndim), dtype=np.int64)

    last_mask = None
    pointed = None  # (box, region) of the last click's error region, on the box of both masks
    method.begin_case(image, sp)
    try:
        for k in range(cap + 1):
            start = time.perf_counter()
            mask = np.asarray(method.segment(image, sp, margin, fg, bg))
            result.latency.append(time.perf_counter() - start)
            if mask.shape != ref.shape:
                raise RuntimeError(f"{method.name}: result shape {mask.shape} differs from the image's {ref.shape}")
            box = _union_box(mask > 0, ref)  # of the result and the reference: metrics and robot
            d, a = evaluate(mask, ref, sp, box)
            if pointed is not None:
                pointed_box, region = pointed
                result.fixed.append(fixed_share(region, mask[pointed_box], ref[pointed_box]))
            result.dice.append(d)
            result.assd.append(a)
            last_mask = mask.astype(np.uint8)
            if k in keep:
                result.masks[k] = last_mask
            if k == cap:
                break
            click = robot_click(mask, ref, sp, np.concatenate([margin, fg, bg]), box)
            if click is None:
                result.stopped_early = True
                break
            point, is_fg = click
            local = point - np.asarray([s.start for s in box])
            pointed = box, pointed_error_region(mask[box], ref[box], local, is_fg)
            result.clicks.append({"point": [int(v) for v in point], "foreground": bool(is_fg)})
            if is_fg:
                fg = np.concatenate([fg, point[None]])
            else:
                bg = np.concatenate([bg, point[None]])
    finally:
        method.end_case()
    if last_mask is not None:
        result.nsd_final = normalised_surface_dice(last_mask, ref, sp)
    # Masks asked for after an early stop are the last result.
    done = len(result.dice) - 1
    for k in keep:
        if done < k <= cap and last_mask is not None:
            result.masks[k] = last_mask
    return result
