"""Monotone, stateless corrective edits: a background click never adds a voxel, a
foreground click never removes one, and dropping the last click gives back exactly the
previous mask, whatever refinement proposes the masks.

MONAI Label clients send two ordered lists, ``foreground`` and ``background``, on every
request, not the order in which the two kinds were interleaved. A click appends to one of
them, so the states of a session are the grid points ``(i, j)``: the first ``i`` foreground
and the first ``j`` background clicks. With ``R(i, j)`` any refinement's proposal for that
state and ``M(0, 0)`` the stage-1 mask, define

    ``M(i, j) = (R(i, j) | M(i-1, j)) & M(i, j-1)``   (terms with a negative index left out).

By induction ``M(i-1, j) <= M(i-1, j-1) <= M(i, j-1)``, so ``M(i, j) >= M(i-1, j)`` (the
foreground click ``i`` only adds) and ``M(i, j) <= M(i, j-1)`` (the background click ``j``
only removes), whichever way the user reached ``(i, j)``; ``M`` is a function of the two
lists alone, so the protocol stays stateless and undo is exact. A click's own voxel keeps its
label when ``R`` forces it.

What ``R(i, j)`` refines (:data:`PREVIOUS`; ``M(i-1, 0)`` / ``M(0, j-1)`` on the edges):

* ``"diagonal"``: ``M(i-1, j-1)``. On a new click every missing proposal of the new row or
  column then depends only on states already known, and they can be computed in one batch.
  But that mask holds neither click: where ``R`` keeps it, the new foreground click ``i``
  gives back what the background click ``j`` took away (``M(i-1, j-1) - M(i-1, j)``), and
  the new background click takes away what click ``i`` added, however far from either.
* ``"merged"``: ``M(i-1, j) | (M(i, j-1) - M(i-1, j-1))``, both parents' decisions (click
  ``j``'s removal and click ``i``'s addition) standing until ``R``, which sees both clicks,
  overrules them. The proposals of a new row or column then follow one another.

A new click costs one proposal per click of the other kind (plus one); a request with ``n``
clicks and nothing cached costs about ``(n/2 + 1)^2``. Since ``M(i, j)`` lies between
``M(i-1, j)`` and ``M(i, j-1)`` whatever ``R(i, j)`` is, a cheaper rule may decide the states
with clicks of both kinds instead (``contest`` of :func:`monotone_masks`): a new click then
costs one proposal, and ``PREVIOUS`` no longer matters.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

State = tuple[int, int]
PREVIOUS = ("diagonal", "merged")


def previous_state(state: State) -> State:
    """The state whose mask the proposal ``R(i, j)`` refines with ``"diagonal"``."""
    i, j = state
    if i and j:
        return i - 1, j - 1
    return (i - 1, 0) if i else (0, j - 1)


def _previous_mask(state: State, masks: Mapping[State, np.ndarray], previous: str) -> np.ndarray | None:
    """The mask the proposal ``R(state)`` refines (module doc, :data:`PREVIOUS`); ``None``
    while a state it is made from is not known yet."""
    i, j = state
    parents = [(i - 1, j), (i, j - 1), (i - 1, j - 1)] if previous == "merged" and i and j else [previous_state(state)]
    if any(p not in masks for p in parents):
        return None
    if len(parents) == 1:
        return masks[parents[0]]
    row, column, diagonal = (masks[p] for p in parents)
    return row | (column & ~diagonal)


def monotone_masks(
    n_foreground: int,
    n_background: int,
    base: np.ndarray,
    propose: Callable[[Sequence[State], Sequence[np.ndarray]], Sequence[np.ndarray]],
    known: Mapping[State, np.ndarray] | None = None,
    previous: str = "diagonal",
    contest: Callable[[State, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[State, np.ndarray]:
    """All masks ``M(i, j)``, ``i <= n_foreground``, ``j <= n_background`` (see the module doc).

    Args:
        n_foreground, n_background: clicks of each kind in the request.
        base: ``M(0, 0)``, the stage-1 mask (binary).
        propose: ``(states, previous masks) -> proposals``: the refinement's binary masks
            ``R`` for those states, each given the mask it refines; called in batches.
        known: masks of states computed before (a cache); they are trusted, not recomputed.
        previous: what each proposal refines, one of :data:`PREVIOUS` (module doc).
        contest: ``(state, lower, diagonal, upper) -> mask``: decides a state with clicks of
            both kinds without a proposal. ``M(i, j)`` lies between ``lower = M(i-1, j)`` and
            ``upper = M(i, j-1)`` whatever ``R(i, j)`` is, and ``upper - lower`` is what
            foreground click ``i`` added (``upper - diagonal``, ``diagonal = M(i-1, j-1)``) and
            background click ``j`` removed (``diagonal - lower``), each without knowing the
            other: ``R(i, j)`` decides only those voxels, and so may ``contest``, clipped to the
            two bounds. ``propose`` is then called for the edge states (``i == 0`` or ``j == 0``)
            only.

    Returns:
        ``{state: bool mask}`` for every state of the grid (``known`` included).
    """
    if previous not in PREVIOUS:
        raise ValueError(f"monotone_masks: previous must be one of {PREVIOUS}, got {previous!r}")
    masks: dict[State, np.ndarray] = {(0, 0): np.asarray(base) > 0}
    masks.update({s: np.asarray(m, dtype=bool) for s, m in (known or {}).items()
                  if s[0] <= n_foreground and s[1] <= n_background})
    todo = [(i, j) for i in range(n_foreground + 1) for j in range(n_background + 1) if (i, j) not in masks]
    proposals: dict[State, np.ndarray] = {}
    while todo:
        if contest is not None:  # the interior states whose bounds are known
            for s in todo:
                i, j = s
                if i and j and (i - 1, j) in masks and (i, j - 1) in masks:
                    lower, upper = masks[(i - 1, j)], masks[(i, j - 1)]
                    decided = np.asarray(contest(s, lower, masks[(i - 1, j - 1)], upper), dtype=bool)
                    masks[s] = lower | (decided & upper)
            todo = [s for s in todo if s not in masks]
            if not todo:
                break
        refined = {s: _previous_mask(s, masks, previous) for s in todo
                   if s not in proposals and (contest is None or not (s[0] and s[1]))}
        ready = [s for s, mask in refined.items() if mask is not None]
        if ready:
            for s, r in zip(ready, propose(ready, [refined[s] for s in ready])):
                proposals[s] = np.asarray(r) > 0
        for s in sorted(proposals):
            if s in masks:
                continue
            i, j = s
            if (i and (i - 1, j) not in masks) or (j and (i, j - 1) not in masks):
                continue
            mask = proposals[s].copy()
            if i:
                mask |= masks[(i - 1, j)]
            if j:
                mask &= masks[(i, j - 1)]
            masks[s] = mask
        todo = [s for s in todo if s not in masks]
    return masks


def boundary_depth(mask: np.ndarray, points: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Physical distance of each of ``points`` (``(N, ndim)`` voxel indices) to the nearest
    voxel of the other label of ``mask`` (the Euclidean distance transform of the side each
    point is on, read at the points), at least the finest voxel size; the whole extent of
    the grid when ``mask`` holds one label only.

    The nearest voxel of the other label is always face-adjacent to the point's side (one
    step from it towards the point stays on the other label otherwise), so only those
    boundary voxels are searched: exact, and far cheaper than two full distance transforms.
    """
    m = np.asarray(mask) > 0
    pts = np.asarray(points, dtype=np.int64).reshape(-1, m.ndim)
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if not m.any() or m.all():
        return np.full(len(pts), float(np.max(np.asarray(m.shape) * sp)))
    out = np.empty(len(pts))
    inside = m[tuple(pts.T)]
    trees = _boundary_trees(np.packbits(m).tobytes(), m.shape, tuple(sp.tolist()))
    for tree, selected in zip(trees, (inside, ~inside)):
        if selected.any():
            out[selected] = tree.query(pts[selected] * sp)[0]
    return np.maximum(out, float(sp.min()))


@functools.lru_cache(maxsize=16)  # a few MB at most: masks of the work grid (<= 48^3 voxels)
def _boundary_trees(packed: bytes, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[cKDTree, cKDTree]:
    """KD-trees (physical coordinates) of the voxels just outside the foreground and just
    outside the background of the mask ``np.packbits`` packed into ``packed`` (both sides
    present): the nearest boundary voxels of :func:`boundary_depth`. Cached by the mask's
    bits, so the states of a request that measure depths in the same mask build them once."""
    m = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=int(np.prod(shape))).reshape(shape).astype(bool)
    sp = np.asarray(spacing)
    return tuple(cKDTree(np.argwhere(~side & ndimage.binary_dilation(side)) * sp) for side in (m, ~m))


def claimed_changes(
    proposal: np.ndarray,
    previous: np.ndarray,
    foreground_distance: np.ndarray,
    background_distance: np.ndarray,
    additions: bool = True,
    removals: bool = True,
) -> np.ndarray:
    """``proposal`` reduced to the changes the seeds claim: relative to ``previous``, a voxel
    may turn foreground only where it is strictly nearer to the foreground seeds than to the
    background ones (``foreground_distance < background_distance``), and background only
    where it is strictly nearer to the background seeds. Elsewhere it keeps ``previous``.

    A proposal (a network, a graph cut) may answer a click by moving the boundary far from
    it; the seeds' distances say which clicks hold a voxel, so a background click cannot
    remove what lies nearer to the margin points or a foreground click, and the reverse.

    Args:
        proposal, previous: binary spatial masks of the same shape.
        foreground_distance, background_distance: per-voxel distances to the nearest seed of
            each kind, same shape.
        additions, removals: which kind of change must be claimed (the other stands as
            proposed).

    Returns:
        bool mask.
    """
    new, old = np.asarray(proposal) > 0, np.asarray(previous) > 0
    d_fg, d_bg = np.asarray(foreground_distance), np.asarray(background_distance)
    if not (new.shape == old.shape == d_fg.shape == d_bg.shape):
        raise ValueError(f"claimed_changes: shapes {new.shape}, {old.shape}, {d_fg.shape}, {d_bg.shape} differ")
    added = new & (d_fg < d_bg) if additions else new
    removed = ~new & (d_bg < d_fg) if removals else ~new
    return (old | added) & ~removed


def local_changes(
    proposal: np.ndarray,
    previous: np.ndarray,
    foreground: np.ndarray,
    background: np.ndarray,
    reach: float = np.inf,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """``proposal`` reduced to the changes a click asked for: relative to ``previous``, keep
    the added connected regions that contain or touch a foreground click and the removed
    ones that contain or touch a background click; changes away from every click (a
    graph cut re-deciding a distant weak edge) are dropped.

    With a finite ``reach``, a click keeps only the changed voxels no deeper (their
    :func:`boundary_depth` in ``previous``, with ``spacing``) than ``reach`` times its own
    depth, connected to it: the robot and an annotator click near
    the middle of an error region, so a click ``d`` deep into a leak may remove a band about
    ``reach * d`` deep along the boundary around it, not the object's interior behind it.

    Args:
        proposal, previous: binary spatial masks of the same shape.
        foreground, background: ``(N, ndim)`` click voxel indices.
        reach: how many times its own depth a click may reach.
        spacing: voxel size for the depths (ones when omitted).

    Returns:
        bool mask.
    """
    new, old = np.asarray(proposal) > 0, np.asarray(previous) > 0
    out = old.copy()
    structure = ndimage.generate_binary_structure(new.ndim, new.ndim)
    kinds = []  # (changed voxels, clicks, label) of each kind of change that has both
    for change, points, value in ((new & ~old, foreground, True), (old & ~new, background, False)):
        pts = np.asarray(points, dtype=np.int64).reshape(-1, new.ndim)
        if len(pts) and change.any():
            kinds.append((change, pts, value))
    if np.isfinite(reach) and kinds:  # every depth in one pass over the boundary
        queries = [q for change, pts, _ in kinds for q in (pts, np.argwhere(change))]
        depths = np.split(boundary_depth(old, np.concatenate(queries), spacing), np.cumsum([len(q) for q in queries])[:-1])
    neighbours = np.argwhere(structure) - 1
    for k, (change, pts, value) in enumerate(kinds):
        depth = np.where(change, 0.0, np.inf)
        limits = np.zeros(len(pts))
        if np.isfinite(reach):
            depth[change] = depths[2 * k + 1]  # argwhere and boolean indexing share the C order
            # A limit beyond the deepest change selects every change: one labelling serves them all.
            limits = np.minimum(reach * depths[2 * k], depths[2 * k + 1].max())
        around = pts[:, None, :] + neighbours[None]  # (clicks, neighbours, ndim)
        inside = np.all((around >= 0) & (around < new.shape), axis=-1)
        nearest = np.where(inside, depth[tuple(np.clip(around, 0, np.asarray(new.shape) - 1).transpose(2, 0, 1))], np.inf)
        reaching = nearest.min(axis=1) <= limits  # clicks that touch a change they may keep
        for limit in sorted(set(limits[reaching].tolist())):
            labels, _ = ndimage.label(depth <= limit, structure)
            selected = reaching & (limits == limit)
            touched = np.unique(labels[tuple(around[selected][inside[selected]].T)])
            out[np.isin(labels, touched[touched > 0])] = value
    return out


def ball(point: np.ndarray, radius: float, spacing: np.ndarray, shape: Sequence[int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels of a grid of ``shape`` (voxel size ``spacing``) within ``radius`` (physical)
    of the voxel ``point``: ``(box, inside)``, the slices of the ball's bounding box (clipped
    to the grid) and a bool array of the box's shape, true inside the ball."""
    sp = np.asarray(spacing, dtype=np.float64)
    half = np.floor(radius / sp).astype(np.int64)
    lo, hi = np.maximum(point - half, 0), np.minimum(point + half + 1, shape)
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, point, sp)], indexing="ij", sparse=True)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), sum(g**2 for g in grids) <= radius**2


def changes_near_clicks(
    proposal: np.ndarray,
    previous: np.ndarray,
    foreground: np.ndarray,
    background: np.ndarray,
    radius: float,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """``proposal`` reduced to the changes within reach of a click of their kind: relative to
    ``previous``, a voxel may turn foreground only within ``radius`` times a foreground
    click's :func:`boundary_depth` (in ``previous``) of that click, and background only
    likewise near a background click (Euclidean, physical units); elsewhere it keeps
    ``previous``.

    A click about ``d`` deep in an error region says what lies within about ``d`` of it; a
    network re-run with the click may answer by moving the boundary far away (a background
    click in a leak that takes half of the object behind it), which this bound refuses
    where the seeds' distances (:func:`claimed_changes`) do not.

    Args:
        proposal, previous: binary spatial masks of the same shape.
        foreground, background: ``(N, ndim)`` click voxel indices.
        radius: how many times its own depth a click may reach (> 0).
        spacing: voxel size (ones when omitted).

    Returns:
        bool mask.
    """
    new, old = np.asarray(proposal) > 0, np.asarray(previous) > 0
    if new.shape != old.shape:
        raise ValueError(f"changes_near_clicks: shapes {new.shape} and {old.shape} differ")
    if not radius > 0:
        raise ValueError(f"changes_near_clicks: radius must be > 0, got {radius!r}")
    sp = np.ones(new.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    out = old.copy()
    for change, points, value in ((new & ~old, foreground, True), (old & ~new, background, False)):
        pts = np.asarray(points, dtype=np.int64).reshape(-1, new.ndim)
        if not len(pts) or not change.any():
            continue
        near = np.zeros(new.shape, dtype=bool)
        for point, reach in zip(pts, radius * boundary_depth(old, pts, sp)):
            box, inside = ball(point, reach, sp, new.shape)
            near[box] |= inside
        out[change & near] = value
    return out


def signed_depth(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray | None:
    """Every voxel's distance (physical) to the nearest voxel of the other label of ``mask``,
    positive inside and negative outside: at a voxel, :func:`boundary_depth` with the sign of
    its side (``None`` when ``mask`` holds one label only: no boundary).

    Two voxels with the same value lie at the same depth from the boundary, whatever their
    distance along it: a click's reach measured on it follows the boundary."""
    m = np.asarray(mask) > 0
    if not m.any() or m.all():
        return None
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return np.where(m, ndimage.distance_transform_edt(m, sampling=sp), -ndimage.distance_transform_edt(~m, sampling=sp))

