"""Network input of the learned refinement (issue 10 (c)): the stage-1 crop with the clicks
as extra channels.

Channels, all on the network grid of the relaxed box (``(H, W)`` or ``(H, W, D)``):

0. the crop, z-scored (as stage 1 sees it);
1. the margin points' cue (EGD, as stage 1);
2. EGD of the foreground refinement clicks (zeros without any);
3. EGD of the background clicks (zeros without any);
4. the previous mask, resampled to the grid (values in [0, 1]).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .cues import cue_map


def refinement_input(
    image: np.ndarray,
    margin_cue: np.ndarray,
    foreground: np.ndarray,
    background: np.ndarray,
    previous_mask: np.ndarray,
    encoding: str = "egd",
    click_cue: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Stack the five channels of the refinement network's input.

    Args:
        image: z-scored crop, spatial (no channel).
        margin_cue: the stage-1 cue of the margin points, same shape.
        foreground, background: ``(N, ndim)`` click voxel indices on this grid (N may be 0).
        previous_mask: the current result on this grid, in [0, 1].
        encoding: cue encoding of the clicks (:mod:`.cues`; the stage-1 one).
        click_cue: ``points -> cue map`` to use instead of computing :func:`cue_map` on
            ``image`` (an interactive caller caches the map of each click set).

    Returns:
        float32 ``(5, *spatial)``.
    """
    img = np.asarray(image, dtype=np.float32)
    prev = np.asarray(previous_mask, dtype=np.float32)
    if np.shape(margin_cue) != img.shape or prev.shape != img.shape:
        raise ValueError(f"refinement_input: image {img.shape}, cue {np.shape(margin_cue)} and mask {prev.shape} differ")
    channels = [img, np.asarray(margin_cue, dtype=np.float32)]
    for points in (foreground, background):
        pts = np.asarray(points, dtype=np.int64).reshape(-1, img.ndim)
        channels.append(cue_map(img, pts, encoding) if click_cue is None else click_cue(pts))
    channels.append(prev)
    return np.stack(channels).astype(np.float32)
