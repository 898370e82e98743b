"""Information fusion of the CNN probability with refinement clicks (paper Eq. 3-7).

With ``D^f``/``D^b`` the geodesic distances to the foreground/background clicks
(:func:`geodesic_distance`; the interior margin points count as foreground clicks):

* ``E^f = e^{-D^f} / (e^{-D^f} + e^{-D^b})`` (Eq. 3), ``E^b = 1 - E^f`` (Eq. 4),
* ``alpha = e^{-min(D^f, D^b)}`` (Eq. 7),
* ``R^f = (1 - alpha) P^f + alpha E^f`` (Eq. 5), ``R^b = 1 - R^f`` (Eq. 6, since P^b = 1 - P^f).

When one kind of click is absent its distance is the constant ``absent_distance``
(default +inf: that kind then exerts no pull, ``E`` of the other kind is 1 and
``alpha = e^{-D}`` of the clicks given). ``E^f`` is evaluated as the logistic
``1 / (1 + e^{D^f - D^b})``, identical to Eq. 3 but free of 0/0 far from all clicks.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from .egd import geodesic_distance
from .validation import as_points

ABSENT_DISTANCE = float("inf")


def fuse_probability(
    prob_fg: np.ndarray,
    dist_fg: np.ndarray | None,
    dist_bg: np.ndarray | None,
    absent_distance: float = ABSENT_DISTANCE,
) -> np.ndarray:
    """User-calibrated foreground probability ``R^f`` (Eq. 3-7).

    Args:
        prob_fg: CNN foreground probability ``P^f``, any shape, values in [0, 1].
        dist_fg, dist_bg: geodesic distances to the foreground/background clicks, same shape,
            or ``None`` when there are no clicks of that kind.
        absent_distance: the distance used for a missing kind of click.

    Returns:
        float32 ``R^f`` of the same shape, in [0, 1].
    """
    p = np.asarray(prob_fg, dtype=np.float64)
    if dist_fg is None and dist_bg is None:
        return p.astype(np.float32)
    df = np.full(p.shape, absent_distance) if dist_fg is None else np.asarray(dist_fg, dtype=np.float64)
    db = np.full(p.shape, absent_distance) if dist_bg is None else np.asarray(dist_bg, dtype=np.float64)
    if df.shape != p.shape or db.shape != p.shape:
        raise ValueError(f"fusion: distance maps {df.shape}/{db.shape} do not match the probability {p.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = df - db
        diff = np.where(np.isnan(diff), 0.0, diff)  # both absent/infinite: no preference
        e_fg = 1.0 / (1.0 + np.exp(np.clip(diff, -700, 700)))
    alpha = np.exp(-np.minimum(df, db))
    return ((1.0 - alpha) * p + alpha * e_fg).astype(np.float32)


def click_distances(
    image: np.ndarray,
    foreground: np.ndarray,
    background: np.ndarray,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Geodesic distance maps ``(D^f, D^b)`` of the clicks on ``image`` (spatial, no channel);
    ``None`` for a kind without clicks."""
    fg = as_points(foreground, image.ndim, "foreground clicks")
    bg = as_points(background, image.ndim, "background clicks")
    d_fg = geodesic_distance(image, fg) if len(fg) else None
    d_bg = geodesic_distance(image, bg) if len(bg) else None
    return d_fg, d_bg


class InformationFusiond(MapTransform):
    """Replace the CNN foreground probability in ``keys`` with the fused ``R^f``.

    ``data[key]`` is ``(2, *spatial)`` softmax (channel 1 = foreground) or ``(1, *spatial)``
    foreground probability; it becomes ``(1, *spatial)`` float32 ``R^f``. Clicks are read
    from ``data[foreground_key]``/``data[background_key]`` (``(N, ndim)`` voxel indices of the
    same grid) and the image from ``data[image_key]`` (``(C, *spatial)``, first channel used).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        foreground_key: str = "foreground",
        background_key: str = "background",
        absent_distance: float = ABSENT_DISTANCE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.foreground_key = foreground_key
        self.background_key = background_key
        self.absent_distance = absent_distance

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = convert_to_numpy(d[self.image_key])[0]
        d_fg, d_bg = click_distances(image, d.get(self.foreground_key), d.get(self.background_key))
        for key in self.key_iterator(d):
            prob = convert_to_numpy(d[key])
            p_fg = prob[-1]
            d[key] = fuse_probability(p_fg, d_fg, d_bg, self.absent_distance)[None]
        return d
