"""MIDeepSeg as a MONAI Label ``deepgrow`` infer task (2D or 3D).

Request: ``foreground``/``background`` voxel indices (all points so far, in order),
``margin_points`` (how many leading foreground points are interior margin points; stored
as ``margin_count``, since ``margin_points`` is the array of those points from then on),
``lamda``/``sigma`` (graph cut).

Pipeline: load (cached) -> [2D model on a 3D image: the clicked slice] -> [an uploaded
``label`` to start from] -> split the points into ``margin_points``, ``fg_clicks``,
``bg_clicks`` -> crop the relaxed box at (capped) original resolution (the work grid,
``*_work`` keys) -> stage 1: network crop + EGD + U-Net (cached per image and margin
points; skipped when a label was uploaded) -> refinement on the work grid -> back to the
original geometry -> clicked voxels forced -> uint8 label.

Refinements (``refinement``, :data:`REFINEMENTS`; each a preset of the options below):

* ``ifgc``: the paper's information fusion + graph cut of all clicks at once (reference);
* ``gc``: graph cut of the CNN probability with the clicks as hard constraints (the
  paper's "GC" baseline);
* ``ifgc_repaired``: IF-GC with the measured repairs (margin points out of the fusion, the
  geodesic on a smoothed image, a click's reach scaled by its depth in the error region),
  proposals combined by :mod:`lib.transforms.monotone_edits` (a background click never adds, a foreground click
  never removes, undo is exact);
* ``learned``: the refinement U-Net (``<model>_refine.pt``, 5 input channels:
  :mod:`lib.transforms.refinement_input`) re-run on the stage-1 crop, its probability
  thresholded, combined the same way;
* ``learned_ifgc`` (2D default): the refinement U-Net's probability fused with the clicks
  and cut on the work grid with the repaired IF-GC's options, so that the boundary follows
  image edges finer than the 64 x 64 network grid; a change stands only where the seeds of
  its kind are the nearest (``claims``: :func:`lib.transforms.monotone_edits.claimed_changes`).

An uploaded label is refined by the fusion + graph cut with the preset's options (a learned
proposal needs the stage-1 crop).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from monai.transforms import Compose, NormalizeIntensity
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer, write_itk

from lib.infers.budget import DEFAULT_BUDGET_S, StartDeadline
from lib.infers.image_cache import CachedLoadImaged, LRUCache
from lib.networks import REFINEMENT_IN_CHANNELS, inference_dtype, load_unet, predict_probability, refinement_from_stage1
from lib.transforms.clicks import MIN_MARGIN_POINTS, ApplyClicksd, ParseClicksd, PasteSliced, SelectSliced
from lib.transforms.crop import (
    CropByMarginPointsd, box_border, box_slices, crop_and_resize, points_to_crop, resample, restore_from_crop, spacing_of,
)
from lib.transforms.cues import check_encoding, cue_map
from lib.transforms.fusion import SPATIAL_WEIGHT, InformationFusiond, click_distance, spatial_distance, temper_probability
from lib.transforms.graph_cut import DEFAULT_LAMDA, DEFAULT_SIGMA, GraphCutd, band_graph_cut
from lib.transforms.monotone_edits import (
    PREVIOUS, ball, boundary_depth, changes_near_clicks, claimed_changes, local_changes, monotone_masks, signed_depth,
)
from lib.transforms.refinement_input import refinement_input
from lib.transforms.stage1 import crop_transforms, cue_transforms
from lib.transforms.start_mask import LoadStartMaskd

logger = logging.getLogger(__name__)

# Refinement (fusion + graph cut) runs on the relaxed box at original resolution, shrunk to
# at most this many voxels so that a click answers interactively on a CPU. 3D: on the
# held-out BraTS case (soft network output) the max-flow took 0.35-0.75 s per click at 64^3
# and 0.07-0.23 s at 48^3, with the same Dice after 5 robot clicks (0.857 vs 0.862). 2D: at
# 100^2 instead of 160^2 the 2D selection set's Dice after 1 / 5 / 10 clicks did not change
# (0.927 / 0.945 / 0.957) and a click on the 512^2 HC18 slice took 0.063 s over REST against
# 0.084-0.097 s (docs/experiments.md, "Corrective clicks").
WORK_VOXELS = {2: 100 * 100, 3: 48 * 48 * 48}
WORK_KEYS = {"margin_key": "margin_points_work", "foreground_key": "fg_clicks_work", "background_key": "bg_clicks_work"}
PROPOSALS = ("ifgc", "gc", "learned", "geodesic")
LEARNED_CUTS = ("none", "gc", "ifgc")
CLAIMS = ("none", "removals", "all")
SPATIAL_TERMS = ("euclidean", "depth", "band")
LEARNED_WARM_BATCHES = 8
# Intra-op CPU threads of a request's torch work (networks, resampling), set on the thread that
# runs the request (``torch_threads``; None: the process's count when the task was made). In 2D
# one: from a thread other than the process's main thread (a server's worker thread), every
# parallel region of a small 2D tensor cost more with two OpenMP threads than the work it split
# (session 21, 2-core host: the 2D refinement network on 64x64 took 0.018-0.026 s with 2 threads
# and 0.008 s with 1 there, 0.007-0.011 s with 2 on the main thread; a 2D click over REST, 80
# clicks on 8 HC18 images with two servers side by side, median / p90 0.049 / 0.056 s -> 0.044 /
# 0.052 s; docs/experiments.md, "One torch thread per 2D request"). In 3D the process's count: the 3D stage-1
# network on 96x96x64 took 0.19 s with 2 threads and 0.32 s with 1, on any thread.
DEFAULT_TORCH_THREADS = {2: 1, 3: None}
# How the stage-1 mask reaches the image (``stage1_resolution``): "work" = the graph cut on
# the work grid, linearly restored (on a large 3D box its boundary moves in steps of several
# voxels); "image" = that boundary placed again at the image's resolution by the same graph
# cut solved in a band one work voxel either side of it (:func:`band_graph_cut`); the
# refinement's changes, made on the work grid against that mask, are added and removed there.
STAGE1_RESOLUTIONS = ("work", "image")
DEFAULT_STAGE1_RESOLUTION = {2: "work", 3: "image"}  # 3D: chosen in session 12 (docs/experiments.md, "3D resolution")
# The graph cut's (lamda, sigma) of Eq. 8 per (dimension, refinement preset), the task's
# defaults for the request parameters ``lamda``/``sigma``, used by every cut of the request
# (stage 1, its band at the image's resolution, the refinement). The paper's (5, 0.1) unless
# listed: the paper's IF-GC stays the reference, and the 3D learned refinement was trained on
# the stage 1 of the paper's cut. The 3D default (repaired IF-GC): (20, 0.03), chosen on the
# 3D selection set in session 16 (stage-1 Dice over its four object types 0.783 with the
# paper's values, 0.808 on a plateau of lamda 10-20 and sigma 0.02-0.03; Dice after 10 robot
# clicks 0.810 -> 0.820 with no click made worse; docs/experiments.md, "Graph-cut contrast in 3D").
GRAPH_CUT_DEFAULTS = {(3, "ifgc_repaired"): (20.0, 0.03)}


def stage1_sigma(data: dict) -> float:
    """The sigma of a request's stage-1 cut (and of its band at the image's resolution):
    ``stage1_sigma`` when the task sets one (``--conf stage1_sigma``, used when the request
    sends no sigma; the refinement's cuts keep the request's ``sigma``), else ``sigma``."""
    return float(data.get("stage1_sigma", data["sigma"]))


def graph_cut_defaults(dimension: int, refinement: str) -> tuple[float, float]:
    """``(lamda, sigma)`` a task of ``dimension`` with the ``refinement`` preset cuts with
    when the request does not say (:data:`GRAPH_CUT_DEFAULTS`)."""
    return GRAPH_CUT_DEFAULTS.get((dimension, refinement), (DEFAULT_LAMDA, DEFAULT_SIGMA))


@dataclass(frozen=True)
class RefinementOptions:
    """How refinement clicks act.

    Attributes:
        proposal: ``"ifgc"`` (fusion + graph cut), ``"gc"`` (graph cut of the CNN
            probability), ``"learned"`` (the refinement U-Net) or ``"geodesic"`` (every
            voxel takes the label of its nearest seed by :func:`click_distance`: margin
            points and foreground clicks against background clicks and the box faces
            inside the image; with ``local``, a click then relabels the region it sits in).
        monotone: combine the proposals by :func:`monotone_masks` (otherwise the proposal
            for all clicks, refining the stage-1 mask, is the answer, as in the paper).
        fusion_margin: the margin points count as foreground clicks in the fusion (paper).
        border_background: the box faces inside the image count as a background click in
            the fusion.
        spatial_weight, smoothing: of :func:`click_distance`.
        local: keep only the proposal's changes that touch a click of their label
            (:func:`local_changes`; with ``monotone``).
        reach_limit: when > 0, ``local`` with a depth limit: a click changes only voxels no
            deeper (distance to the previous mask's boundary) than ``reach_limit`` times its
            own depth, connected to it (:func:`local_changes`; with ``monotone``).
        depth_reach: a refinement click's spatial term is measured in units of its depth in
            the error region it was placed in (its distance to the previous mask's boundary)
            instead of the box's side, so its reach follows that region's size (with
            ``monotone``).
        learned_cut: how the learned proposal's probability (network grid, resampled to the
            work grid) becomes a mask: ``"none"`` (threshold 0.5), ``"gc"`` (graph cut of it
            on the work grid with the state's clicks as hard constraints: the boundary snaps
            to image edges finer than the network grid) or ``"ifgc"`` (fused with the
            clicks' distances first, as the ``ifgc`` proposal fuses the stage-1 probability).
        temperature: the probability a state fuses with its clicks is tempered first
            (:func:`temper_probability`; > 1: a confident network yields more to the clicks).
        geodesic_weight: with ``depth_reach``, the weight of a click's geodesic distance
            against its depth-scaled spatial term (< 1: a click reaches further across a
            region whose intensity varies).
        claims: which of the proposal's changes must be claimed by the state's seeds
            (:func:`claimed_changes`; :data:`CLAIMS`): ``"none"``; ``"removals"`` (a removed
            voxel must lie nearer, by :func:`click_distance`, to a background click or box
            face than to every margin point and foreground click, so that a background click
            cannot take away what the other seeds hold); ``"all"`` (and an added voxel nearer
            to a foreground seed than to every background one).
        spatial_term: with ``depth_reach``, what a click's spatial term measures:
            ``"euclidean"`` (its distance to the click) or ``"depth"`` (the difference of
            :func:`signed_depth` in the previous mask between a voxel and the click: a click in
            a thin band along the boundary reaches along the band as far as its geodesic
            distance allows, not deeper or shallower) or ``"band"`` (the depth difference
            plus the Euclidean distance divided by ``band_reach``: a click reaches
            ``band_reach`` times further along the boundary than across it); :data:`SPATIAL_TERMS`.
        band_reach: with ``spatial_term "band"``, how many times further a click reaches
            along the boundary than across it (2: chosen on the 3D selection set; docs/experiments.md, "A
            click's reach along the boundary").
        seed_radius: when > 0 (and < 1), a refinement click's hard seed in the graph cut is
            the ball of ``seed_radius`` times its depth (its distance to the previous mask's
            boundary) around it, not its voxel alone, so the cut can no longer answer a click
            deep in a region by a few voxels around it. The ball lies on the click's side of
            that boundary, but may cross the object's true boundary where that runs nearer to
            the click (docs/experiments.md, "A click seeds a ball").
        seed_limit: when > 0, the seed ball's radius is at most ``seed_limit`` voxels of the
            work grid (its finest spacing): a deep click then seeds its neighbourhood, not a
            ball that reaches a true boundary near it.
        radius_limit: when > 0, a state's changes must lie within ``radius_limit`` times a
            click's depth (in the previous mask) of a click of their kind
            (:func:`changes_near_clicks`; after ``claims``).
        previous: the mask each state's proposal refines (:func:`monotone_masks`,
            :data:`PREVIOUS`): ``"diagonal"`` (the state without its last click of either
            kind) or ``"merged"`` (the last clicks' decisions both standing); no effect with
            ``contest "nearest"``, where no proposal refines a state with clicks of both kinds.
        contest: what decides a state with clicks of both kinds (:data:`CONTESTS`; with
            ``monotone``), which only chooses the voxels its last foreground click added and its
            last background click removed, each without the other (``contest`` of
            :func:`monotone_masks`): ``"proposal"`` (the state's proposal, one per state:
            a new click costs one proposal per click of the other kind, plus one) or
            ``"nearest"`` (each voxel goes to the nearer of the two clicks by
            :func:`click_distance`: a new click costs one proposal).
    """

    proposal: str = "ifgc"
    monotone: bool = False
    fusion_margin: bool = True
    border_background: bool = False
    spatial_weight: float = SPATIAL_WEIGHT
    smoothing: float = 0.0
    local: bool = False
    depth_reach: bool = False
    learned_cut: str = "none"
    reach_limit: float = 0.0
    temperature: float = 1.0
    claims: str = "none"
    geodesic_weight: float = 1.0
    radius_limit: float = 0.0
    seed_radius: float = 0.0
    seed_limit: float = 0.0
    spatial_term: str = "euclidean"
    band_reach: float = 2.0
    previous: str = "diagonal"
    contest: str = "proposal"


CONTESTS = ("proposal", "nearest")
REFINEMENTS = {
    "ifgc": RefinementOptions(),
    "gc": RefinementOptions(proposal="gc"),
    # Chosen on 46 training objects with the robot (scripts/tune_refinement.py; README, "What answers now").
    "ifgc_repaired": RefinementOptions(
        monotone=True, fusion_margin=False, smoothing=1.0, depth_reach=True, spatial_weight=1.0
    ),
    "learned": RefinementOptions(proposal="learned", monotone=True),
    # The learned proposal's probability fused with the clicks and cut on the work grid, with
    # the repaired IF-GC's options, its changes kept where the clicks' seeds claim them; both
    # chosen on the selection set (scripts/make_selection_set.py; docs/experiments.md).
    "learned_ifgc": RefinementOptions(
        proposal="learned", monotone=True, learned_cut="ifgc", fusion_margin=False, smoothing=1.0,
        depth_reach=True, spatial_weight=1.0, claims="all"
    ),
}
# The default per dimension: learned + IF-GC in 2D (chosen on the selection set), the repaired
# IF-GC in 3D (the 3D learned refinement, selectable, lowers the held-out tumour); README,
# "Corrective clicks".
DEFAULT_REFINEMENT = {2: "learned_ifgc", 3: "ifgc_repaired"}


def warm_up_label_writer() -> None:
    """Write a tiny label once so that ITK's lazily loaded IO modules (about 15 s on first
    use) load at server start, not on the annotator's first click."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_itk(np.zeros((2, 2), np.uint8), f"{tmp}/warm.nrrd", None, "uint8", False)
        write_itk(np.zeros((2, 2, 2), np.uint8), f"{tmp}/warm.nii.gz", np.eye(4), "uint8", False)
    logger.info("label writer ready in %.1f s", time.perf_counter() - start)


class MarginPointsIncomplete(Exception):
    """Fewer than two margin points so far: nothing to segment yet."""

    def __init__(self, data: dict) -> None:
        super().__init__("waiting for interior margin points")
        self.data = data


class MIDeepSegInfer(BasicInferTask):
    """MIDeepSeg for Slicer/OHIF point tools (``type = deepgrow``)."""

    def __init__(
        self,
        path: str | Sequence[str],
        network: torch.nn.Module,
        dimension: int,
        spatial_size: Sequence[int],
        margin_points: int,
        description: str,
        labels: Sequence[str] = ("object",),
        work_voxels: int | None = None,
        precision: str = "auto",
        cue: str = "egd",
        refinement: str | None = None,
        refinement_options: dict | None = None,
        refinement_path: str | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
        stage1_resolution: str | None = None,
        ensemble_paths: Sequence[str] = (),
        shared_cue: bool = False,
        stage1_sigma: float | None = None,
        torch_threads: int | None = None,
        **kwargs,
    ) -> None:
        refinement = refinement or DEFAULT_REFINEMENT[dimension]
        lamda, sigma = graph_cut_defaults(dimension, refinement)
        super().__init__(
            path=path,
            network=network,
            type=InferType.DEEPGROW,
            labels=list(labels),
            dimension=dimension,
            description=description,
            config={"margin_points": margin_points, "lamda": lamda, "sigma": sigma},
            load_strict=True,
            **kwargs,
        )
        self.spatial_size = tuple(spatial_size)
        self._grid: tuple = (None, self.spatial_size)
        self._weights_ids: dict[str, tuple] = {}  # per file: ((path, mtime), digest)
        self.default_margin_points = margin_points
        self.work_voxels = work_voxels or WORK_VOXELS[dimension]
        if self.work_voxels < 2**dimension:
            raise ValueError(f"work_voxels must be at least {2**dimension}, got {self.work_voxels}")
        inference_dtype(precision, "cpu")  # fail at start-up on an unknown precision
        self.precision = precision
        self.cue = check_encoding(cue)
        if refinement not in REFINEMENTS:
            raise ValueError(f"refinement must be one of {tuple(REFINEMENTS)}, got {refinement!r}")
        self.refinement = refinement
        self.options = replace(REFINEMENTS[refinement], **(refinement_options or {}))
        if self.options.proposal not in PROPOSALS:
            raise ValueError(f"refinement proposal must be one of {PROPOSALS}, got {self.options.proposal!r}")
        if self.options.learned_cut not in LEARNED_CUTS:
            raise ValueError(f"refinement learned_cut must be one of {LEARNED_CUTS}, got {self.options.learned_cut!r}")
        if self.options.claims not in CLAIMS:
            raise ValueError(f"refinement claims must be one of {CLAIMS}, got {self.options.claims!r}")
        if self.options.spatial_term not in SPATIAL_TERMS:
            raise ValueError(f"refinement spatial_term must be one of {SPATIAL_TERMS}, got {self.options.spatial_term!r}")
        if self.options.previous not in PREVIOUS:
            raise ValueError(f"refinement previous must be one of {PREVIOUS}, got {self.options.previous!r}")
        if self.options.contest not in CONTESTS:
            raise ValueError(f"refinement contest must be one of {CONTESTS}, got {self.options.contest!r}")
        for name in ("radius_limit", "reach_limit", "seed_limit"):
            if not getattr(self.options, name) >= 0:
                raise ValueError(f"refinement {name} must be >= 0, got {getattr(self.options, name)!r}")
        if not 0 <= self.options.seed_radius < 1:
            raise ValueError(f"refinement seed_radius must be in [0, 1), got {self.options.seed_radius!r}")
        if not self.options.geodesic_weight >= 0:
            raise ValueError(f"refinement geodesic_weight must be >= 0, got {self.options.geodesic_weight!r}")
        if not self.options.band_reach > 0:
            raise ValueError(f"refinement band_reach must be > 0, got {self.options.band_reach!r}")
        if not self.options.temperature > 0:
            raise ValueError(f"refinement temperature must be > 0, got {self.options.temperature!r}")
        self._loader = CachedLoadImaged(keys="image")
        self._work_crop = _CachedWorkCrop(self.work_voxels)
        self._distances = _CachedClickDistances(self.options.spatial_weight, self.options.smoothing)
        self._stage1_cache = LRUCache(16)
        self._learned = _LearnedProposal(self, refinement_path) if self.options.proposal == "learned" else None
        self.budget_s = float(budget_s)
        self.stage1_sigma = None if stage1_sigma is None else float(stage1_sigma)
        if self.stage1_sigma is not None and not 0 < self.stage1_sigma < np.inf:
            raise ValueError(f"stage1_sigma must be > 0, got {self.stage1_sigma!r}")
        self.stage1_resolution = stage1_resolution or DEFAULT_STAGE1_RESOLUTION[dimension]
        if self.stage1_resolution not in STAGE1_RESOLUTIONS:
            raise ValueError(f"stage1_resolution must be one of {STAGE1_RESOLUTIONS}, got {self.stage1_resolution!r}")
        image_stage1 = _ImageStage1() if self.stage1_resolution == "image" else None
        self._refine = _Refinement(self.options, self._distances, self._learned, image_stage1)
        self._restore = _RestoreAndBinarise()
        missing = [p for p in ensemble_paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"stage-1 ensemble: no weights at {', '.join(missing)}")
        self._ensemble = [_EnsembleMember(p, dimension) for p in ensemble_paths]
        self.shared_cue = bool(shared_cue)
        if torch_threads is None:
            torch_threads = DEFAULT_TORCH_THREADS[dimension] or torch.get_num_threads()
        self.torch_threads = int(torch_threads)
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads!r}")
        # One request of this task at a time: its caches and its network are shared state.
        self._lock = threading.Lock()

    def warm_up(self, device: str) -> None:
        """Load the weights and run the network once on a blank input, so that the one-off
        set-up of the first forward pass (about 1 s for the 3D U-Net on a CPU) happens at
        server start, not on the annotator's first click; the learned refinement's network
        likewise, for every batch size up to ``LEARNED_WARM_BATCHES`` (the CPU back end sets
        each new input shape up once)."""
        start = time.perf_counter()
        network = self._get_network(device, None)
        dtype = inference_dtype(self.precision, device)
        predict_probability(network, torch.zeros((1, 2, *self.network_grid()), device=device), dtype)
        for member in self._ensemble:
            net, grid = member.network(device)
            predict_probability(net, torch.zeros((1, 2, *(grid or self.network_grid())), device=device), dtype)
        if self._learned is not None:
            refine = self._learned.network(device)
            for batch in range(1, LEARNED_WARM_BATCHES + 1):
                shape = (batch, REFINEMENT_IN_CHANNELS, *self._learned.grid)
                predict_probability(refine, torch.zeros(shape, device=device), dtype)
        logger.info("%dD network ready on %s (%s) in %.1f s", self.dimension, device, dtype, time.perf_counter() - start)

    def __call__(self, request, callbacks=None):
        """One request (parameters checked by the app's edge, :mod:`lib.edge.params`), within
        the time budget (``deadline``: :class:`lib.infers.budget.Deadline`). Raises
        :class:`lib.transforms.validation.InvalidInputError` for a wrong input,
        ``FileNotFoundError`` for a missing image and :class:`lib.infers.budget.BudgetExceeded`
        past the budget; anything else is a fault of the server."""
        request = dict(request)
        if "margin_points" in request:  # the count; "margin_points" names the points themselves below
            request["margin_count"] = request.pop("margin_points")
        if "label" in request:  # the uploaded mask to start from (a file path); "label" is the reference elsewhere
            request["start_label"] = request.pop("label")
        if "sigma" not in request and self.stage1_sigma is not None:  # a sigma sent applies to every cut
            request["stage1_sigma"] = self.stage1_sigma
        with self._lock:
            torch.set_num_threads(self.torch_threads)  # this thread's (DEFAULT_TORCH_THREADS)
            try:
                return super().__call__(request, callbacks)
            except MarginPointsIncomplete as waiting:
                return self._empty_result(waiting.data)

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        transforms: list = [StartDeadline(self.budget_s), self._loader]
        if self.dimension == 2:
            transforms.append(SelectSliced(keys="image"))
        transforms += [
            LoadStartMaskd(keys="start_label"),
            ParseClicksd(keys="image", default_count=self.default_margin_points),
            _StopWhenIncomplete(),
            self._work_crop,
        ]
        return transforms

    def run_pre_transforms(self, data: dict[str, Any], transforms) -> dict:
        """The pre-transforms in order (what they time is in the result's ``timing``).
        MONAI Label's runner would also log each at INFO and reset its logger's level, which
        clears every logger's cache: about 2 ms of a 2D click."""
        for transform in transforms:
            data = transform(data)
        return data

    def inferer(self, data=None):
        return None

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        """Stage 1: U-Net foreground probability on the work grid, cached per image, slice,
        margin points and model file."""
        timing = data.setdefault("timing", {})
        if data.get("start_mask") is not None:  # refine the uploaded mask: no network
            data["stage1_key"] = ("start_mask", hashlib.sha1(np.packbits(data["start_mask"]).tobytes()).hexdigest())
            data["pred"] = crop_and_resize(data["start_mask"][None], data["work_box"], data["work_image"].shape[1:], "bilinear")
            data["stage1_cached"] = False
            return data
        model_path = self.get_path()
        key = (
            data.get("image_cache_key"),
            data.get("slice"),
            np.asarray(data["margin_points"]).tobytes(),
            model_path,
            self._model_mtime(model_path),
            tuple((m.path, self._model_mtime(m.path)) for m in self._ensemble),
            str(device),
        )
        cached = self._stage1_cache.get(key)
        if cached is None:
            data["deadline"].check("stage 1")
            grid = self.network_grid(model_path)
            networks = [(self._get_network(device, data), grid)]
            networks += [(network, member_grid or grid) for network, member_grid in (m.network(device) for m in self._ensemble)]
            answers = self._ensemble_answers(data, networks, device, timing)
            net_input, crop_box, _ = answers[0]
            # the members' mean, on the first network's grid (the same box)
            prob = sum(resample(answer[2], grid, "bilinear") for answer in answers) / len(answers)
            work_prob = resample(prob, data["work_image"].shape[1:], "bilinear")
            network_box = (crop_box, prob) if self.stage1_resolution == "image" else None
            cached = (work_prob, net_input, network_box)
            self._stage1_cache.put(key, cached)
        data["stage1_cached"] = "network" not in timing
        data["stage1_key"] = key
        data["pred"], data["stage1_input"], data["stage1_network"] = cached
        data["device"] = device
        return data

    def _ensemble_answers(self, data: dict, networks: Sequence[tuple[torch.nn.Module, tuple[int, ...]]], device: str,
                          timing: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`_probability` of every ``(network, grid)``, in the given order. With
        ``shared_cue`` (``--conf shared_cue true``, not a default) the cue map is computed
        once, on the smallest grid, and resampled for the others: the 3D EGD on 96 x 96 x 64
        takes 0.19 s here, on 64 x 64 x 48 0.07 s (docs/experiments.md, "One cue for the 3D ensemble")."""
        order = list(range(len(networks)))
        if self.shared_cue:
            order.sort(key=lambda k: int(np.prod(networks[k][1])))
        answers, cue = {}, None
        for k in order:
            network, grid = networks[k]
            answers[k] = self._probability(data, network, grid, device, timing, cue)
            if self.shared_cue and cue is None:
                cue = answers[k][0][-1:]  # the network input's last channel is the cue
        return [answers[k] for k in range(len(networks))]

    def _probability(self, data: dict, network: torch.nn.Module, grid: tuple[int, ...], device: str,
                     timing: dict, cue: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One stage-1 network on the relaxed box resized to ``grid``: ``(network input
        (2, *grid), crop box, foreground probability (1, *grid))``; ``cue``: a cue map
        ``(1, *other grid)`` of the same box to resample instead of computing one; seconds
        added to ``timing["egd"]`` and ``timing["network"]``."""
        start = time.perf_counter()
        crop = Compose(crop_transforms(grid))(
            {"image": data["image"], "margin_points": data["margin_points"], "spacing": data.get("spacing")}
        )
        if cue is None:
            net_input = np.asarray(Compose(cue_transforms(self.cue))(crop)["image"], dtype=np.float32)
        else:
            net_input = np.concatenate([np.asarray(crop["image"], dtype=np.float32), resample(cue, grid, "bilinear")])
        timing["egd"] = timing.get("egd", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        x = torch.as_tensor(net_input)[None].to(device)
        prob = predict_probability(network, x, inference_dtype(self.precision, device))[0, 1:].cpu().numpy()
        timing["network"] = timing.get("network", 0.0) + time.perf_counter() - start
        return net_input, crop["crop_box"], prob

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [self._refine, self._restore, ApplyClicksd(keys="pred"), PasteSliced(keys="pred")]

    def run_post_transforms(self, data: dict[str, Any], transforms) -> dict:
        timing = data.setdefault("timing", {})
        names = {_Refinement: "refinement"}
        for t in transforms:
            start = time.perf_counter()
            data = t(data)
            name = names.get(type(t), "restore")
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - start
        return self._finalise(data)

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        start = time.perf_counter()
        data.setdefault("result_dtype", "uint8")
        result = Writer(label="pred", json="result", ref_image="image")(data)
        data["result"]["timing"]["write"] = round(time.perf_counter() - start, 4)
        return result

    def _finalise(self, data: dict[str, Any]) -> dict:
        """uint8 spatial label and the result JSON (stage, clicks, per-stage seconds)."""
        data["pred"] = np.asarray(data["pred"])[0].astype(np.uint8)
        refinement = len(data["fg_clicks"]) + len(data["bg_clicks"])
        data["result"] = {
            "stage": 2 if refinement else 1,
            "start": "stage 1" if data.get("start_mask") is None else "uploaded label",
            "refinement": self.refinement,
            "margin_points": len(data["margin_points"]),
            "refinement_clicks": int(refinement),
            "stage1_cached": bool(data.get("stage1_cached")),
            "weights": self.weights_id(),
            # the learned refinement's file ("" while none is published: the stage-1 network answers)
            "refinement_weights": self.weights_id(self._learned.path or "") if self._learned is not None else None,
            "voxels": int(data["pred"].sum()),
            "timing": {k: round(v, 4) for k, v in data.get("timing", {}).items()},
        }
        return data

    def _empty_result(self, data: dict[str, Any]):
        shape = data["slice"][2] if data.get("slice") else np.shape(data["image"])[1:]
        data["pred"] = np.zeros(shape, dtype=np.uint8)
        data["result"] = {
            "stage": 0,
            "message": f"waiting for interior margin points: {len(data['margin_points'])} of at least "
            f"{MIN_MARGIN_POINTS} placed",
            "margin_points": len(data["margin_points"]),
            "voxels": 0,
            "timing": {k: round(v, 4) for k, v in data.get("timing", {}).items()},
        }
        return self.writer(data)

    def network_grid(self, path: str | None = None) -> tuple[int, ...]:
        """The stage-1 network's input grid: the ``"grid"`` stored in its weights file (the
        trainer writes the grid it trained on), else ``spatial_size``; read once per version
        of the file."""
        path = path if path is not None else self.get_path()
        version = (path, self._model_mtime(path))
        if self._grid[0] != version:
            grid = self.spatial_size
            if path and os.path.exists(path):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(checkpoint, dict) and "grid" in checkpoint:
                    grid = tuple(int(n) for n in checkpoint["grid"])
                    if len(grid) != self.dimension:
                        raise ValueError(f"{path}: grid {grid} is not {self.dimension}D")
            self._grid = (version, grid)
        return self._grid[1]

    def weights_id(self, path: str | None = None) -> str:
        """The first 16 hex digits of the SHA-256 of a weights file, by default the stage-1
        file now in use ("" when there is none): which weights answered, the same on every
        replica of a shared model folder. Hashed once per version of the file."""
        path = self.get_path() if path is None else path
        version = (path, self._model_mtime(path))
        cached = self._weights_ids.get(path)
        if cached is None or cached[0] != version:
            digest = ""
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
            cached = self._weights_ids[path] = (version, digest)
        return cached[1]

    @staticmethod
    def _model_mtime(path: str | None) -> float:
        return os.path.getmtime(path) if path and os.path.exists(path) else 0.0


def near(mask: np.ndarray, reach: float, spacing: Sequence[float]) -> np.ndarray:
    """Voxels within ``reach`` (physical units) of ``mask`` (bool, spatial), by the Euclidean
    distance transform of the mask's bounding box grown by ``reach``."""
    sp = np.asarray(spacing, dtype=np.float64)
    idx = np.argwhere(mask)
    pad = np.ceil(reach / sp).astype(np.int64) + 1
    lo, hi = np.maximum(idx.min(0) - pad, 0), np.minimum(idx.max(0) + pad + 1, mask.shape)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out = np.zeros(mask.shape, dtype=bool)
    out[sub] = ndimage.distance_transform_edt(~mask[sub], sampling=sp) <= reach
    return out


class _EnsembleMember:
    """A further stage-1 network whose probability is averaged with the task's own
    (``ensemble_paths``), on the grid stored in its weights file; reloaded when the file
    changes."""

    def __init__(self, path: str, dimension: int) -> None:
        self.path = path
        self.dimension = dimension
        self._loaded: tuple | None = None
        self._network: tuple[torch.nn.Module, tuple[int, ...] | None] | None = None

    def network(self, device: str) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
        version = (str(device), MIDeepSegInfer._model_mtime(self.path))
        if self._network is None or version != self._loaded:
            net, grid = load_unet(self.path, self.dimension)
            self._network, self._loaded = (net.to(device).eval(), grid), version
        return self._network


class _StopWhenIncomplete:
    """Stop the pipeline (and answer an empty label) until two margin points are in."""

    def __call__(self, data: dict) -> dict:
        if data.get("start_mask") is None and len(data["margin_points"]) < MIN_MARGIN_POINTS:
            raise MarginPointsIncomplete(data)
        return data


class _ImageStage1:
    """The 3D stage-1 mask at the image's resolution (``stage1_resolution = "image"``): a graph
    cut solved in the band where the linearly restored work-grid cut is neither 0 nor 1,
    widened by a voxel (:func:`band_graph_cut`); the rest keeps the restored label. Cached per
    stage-1 result and graph-cut setting.

    The band's probability is the mean of the network's (resampled straight from the network
    grid to the box) and of the restored work-grid cut, which has already weighed the
    network against the image's edges: the fine cut places that boundary at the image's
    resolution. On the network's probability alone it followed a network that is biased on
    large objects (the stage-1 ensemble's class-agnostic member under-segments them): on the
    synthetic ellipsoid of ``scripts/measure_stage1_resolution.py`` Dice 0.927, against 0.952
    for the work grid and 0.966 with the mean (docs/experiments.md, "3D resolution").

    Called with the work-grid cut of stage 1, it returns ``(fine, work)``: ``fine`` the
    box-sized bool mask at the image's resolution, ``work`` the same mask on the work grid
    (anti-aliased, threshold 0.5), which the refinement takes as ``M(0, 0)``: its changes are
    then made against the mask the user sees, so a click on an error of the fine boundary
    moves it."""

    def __init__(self) -> None:
        self._cache = LRUCache(16)

    @staticmethod
    def applies(data: dict) -> bool:
        """A network box was kept (``stage1_network``) and the work grid is coarser than it."""
        if data.get("stage1_network") is None:
            return False
        size = tuple(int(v) for v in data["work_box"][1] - data["work_box"][0])
        return size != tuple(data["work_image"].shape[1:])

    def __call__(self, data: dict, work_cut: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``work_cut``: computes the work-grid cut of stage 1 (called only when not cached)."""
        key = (data["stage1_key"], data.get("lamda"), stage1_sigma(data))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        box = data["work_box"]
        size = tuple(int(v) for v in box[1] - box[0])
        net_box, net_prob = data["stage1_network"]
        if not np.array_equal(net_box, box):
            raise RuntimeError(f"stage 1: the network's box {net_box.tolist()} is not the work box {box.tolist()}")
        soft = resample(np.asarray(work_cut(), dtype=np.float32)[None], size, "bilinear")[0]
        band = ndimage.binary_dilation((soft > 0.01) & (soft < 0.99))
        image = np.asarray(data["image"])[0][box_slices(box)]
        margin = np.asarray(data["margin_points"]).reshape(-1, len(size)) - box[0]
        prob = 0.5 * (resample(np.asarray(net_prob), size, "bilinear")[0] + soft)
        fine = band_graph_cut(
            image, prob, soft >= 0.5, band, margin,
            float(data["lamda"]), stage1_sigma(data),
            spacing_of(data, "image"),
        )
        work = resample(fine[None].astype(np.float32), data["work_image"].shape[1:], "bilinear")[0] >= 0.5
        self._cache.put(key, (fine, work))
        return fine, work


class _RestoreAndBinarise:
    """Work-grid mask -> original grid (linear interpolation, threshold 0.5).

    With the stage-1 mask at the image's resolution (``stage1_image_mask``, from
    :class:`_ImageStage1`), the voxels the refinement added to or removed from ``M(0, 0)``
    (``stage1_work_mask``, that mask on the work grid) are restored and added to or removed
    from it. Where the fine boundary lies outside the coarse one, a removal would leave a thin
    rim of it behind, so the fine voxels outside the coarse mask within one work voxel of a
    removal are removed with it. Additions and removals (with their rims) only grow with
    clicks of their kind, so the edits stay monotone, and where no click changed anything the
    boundary is the fine one.
    """

    def __call__(self, data: dict) -> dict:
        box, shape = data["work_box"], data["work_original_shape"]
        mask = np.asarray(data["pred"])[0] > 0
        fine = data.get("stage1_image_mask")
        if fine is None:
            data["pred"] = (restore_from_crop(mask[None], box, shape) >= 0.5).astype(np.uint8)
            return data
        before = np.asarray(data["stage1_work_mask"]) > 0
        size = tuple(int(v) for v in box[1] - box[0])
        soft = resample(np.stack([mask & ~before, before & ~mask, before]).astype(np.float32), size, "bilinear")
        added, removed, coarse = soft >= 0.5
        if removed.any():  # the fine rim outside the coarse mask goes with the removal next to it
            reach = float(np.max(np.asarray(data["work_spacing"], dtype=np.float64)))
            removed |= fine & ~coarse & near(removed, reach, spacing_of(data, "image"))
        out = np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)
        out[box_slices(box)] = (fine | added) & ~removed
        data["pred"] = out[None]
        return data


class _CachedWorkCrop:
    """The relaxed box of the margin points at (capped) original resolution, as
    ``CropByMarginPointsd(prefix="work")`` writes it, cached per image, slice and margin
    points; only the clicks are mapped anew on each request. Refinement clicks outside the
    box are left out of the work grid (clipping them onto its border would move them); the
    label is forced at them in the final mask all the same (:class:`ApplyClicksd`)."""

    POINT_KEYS = ("margin_points", "fg_clicks", "bg_clicks")
    KEYS = ("work_image", "work_box", "work_original_shape", "work_spacing")

    def __init__(self, max_voxels: int) -> None:
        self._crop = CropByMarginPointsd(
            keys="work_image", spatial_size=None, max_voxels=max_voxels, prefix="work", point_keys=()
        )
        self._cache = LRUCache(8)

    def __call__(self, data: dict) -> dict:
        points = data["margin_points"]
        if data.get("start_mask") is not None:
            # The relaxed box of the uploaded mask and of every click.
            idx = np.argwhere(data["start_mask"])
            points = np.concatenate([idx.min(0)[None], idx.max(0)[None], data["fg_clicks"], data["bg_clicks"]])
        key = (data.get("image_cache_key"), data.get("slice"), np.asarray(points).tobytes())
        cached = self._cache.get(key)
        if cached is None:
            out = self._crop({"work_image": data["image"], "margin_points": points, "spacing": data.get("spacing")})
            cached = {k: out[k] for k in self.KEYS}
            self._cache.put(key, cached)
        data.update(cached)
        data["work_cache_key"] = key
        size = cached["work_image"].shape[1:]
        box = cached["work_box"]
        for name in self.POINT_KEYS:
            points = np.asarray(data[name]).reshape(-1, box.shape[1])
            inside = np.all((points >= box[0]) & (points < box[1]), axis=1)
            data[f"{name}_work"] = points_to_crop(points[inside], box, size)
        return data


class _CachedClickDistances:
    """The fusion's distance maps on the work grid (:func:`click_distance` with the task's
    spatial weight), one per seed set, cached across requests. The geodesic part and the
    spatial part are cached apart and summed as :func:`click_distance` sums them (the same
    float32 map), so a new click costs one raster scan whichever spatial weights its maps
    are asked with (the fusion's depth-scaled maps take the geodesic part, the claims the
    task's weight)."""

    def __init__(self, spatial_weight: float = SPATIAL_WEIGHT, smoothing: float = 0.0) -> None:
        self.spatial_weight = spatial_weight
        self.smoothing = smoothing
        self._cache = LRUCache(256)

    def distance(self, data: dict, points: np.ndarray, spatial_weight: float | None = None) -> np.ndarray:
        """``spatial_weight``: override the task's (0: the geodesic part alone)."""
        weight = self.spatial_weight if spatial_weight is None else spatial_weight
        key = (data["work_cache_key"], np.asarray(points).tobytes())
        dist = self._cache.get(key + (weight,))
        if dist is None:
            if weight == 0:
                dist = click_distance(data["work_image"][0], points, data["work_spacing"], 0.0, self.smoothing)
            else:
                spatial = self._cache.get(key + ("spatial",))
                if spatial is None:
                    spatial = spatial_distance(data["work_image"].shape[1:], points, data["work_spacing"])
                    self._cache.put(key + ("spatial",), spatial)
                dist = np.asarray(self.distance(data, points, 0.0) + weight * spatial, dtype=np.float32)
            self._cache.put(key + (weight,), dist)
        return dist


class _Refinement:
    """The refinement on the work grid: ``pred`` (foreground probability of stage 1 or of the
    uploaded mask) becomes ``M(i, j)`` of :func:`monotone_masks`, with ``M(0, 0)`` the graph
    cut of ``pred`` with the margin points as hard foreground and ``R`` the proposal of
    :attr:`RefinementOptions.proposal` for each state (without ``monotone``: the proposal
    for all clicks). IF-GC proposals are the pipeline's :class:`InformationFusiond` and
    :class:`GraphCutd` on the state's clicks, with the distance maps this class assembles
    from the task's cache. Masks are cached per state (the click lists' prefixes), so a new
    click costs one row or column of the grid."""

    def __init__(self, options: RefinementOptions, distances: _CachedClickDistances, learned: "_LearnedProposal | None",
                 image_stage1: _ImageStage1 | None = None) -> None:
        self.options = options
        self.image_stage1 = image_stage1
        self.distances = distances
        self.learned = learned
        self._fusion = InformationFusiond(keys="pred", image_key="work_image", **WORK_KEYS)
        self._graph_cut = GraphCutd(keys="pred", image_key="work_image", spacing_key="work_spacing", **WORK_KEYS)
        self._masks = LRUCache(1024)
        self._euclid = LRUCache(64)  # a click's Euclidean distance map (mm) on the work grid
        self._borders = LRUCache(8)  # the box faces inside the image, per work crop

    def _state_key(self, data: dict, state: tuple[int, int], weights: float | None) -> tuple:
        """The cache key of one state's mask; ``weights``: the learned network's version."""
        i, j = state
        return (data["work_cache_key"], data["stage1_key"], weights, data.get("lamda"), data.get("sigma"),
                data.get("stage1_sigma"),
                data["fg_clicks_work"][:i].tobytes(), data["bg_clicks_work"][:j].tobytes())

    def _cut(self, data: dict, fg: np.ndarray, bg: np.ndarray, previous: np.ndarray | None,
             probability: np.ndarray | None = None, fuse: bool | None = None) -> np.ndarray:
        """Graph cut of one state's ``probability`` (default: the stage-1 ``pred`` or the
        uploaded mask), fused first with its clicks' distances when ``fuse`` (default: unless
        the proposal is ``gc``; a learned refinement refines an uploaded mask this way)."""
        state = {**data, "fg_clicks_work": fg, "bg_clicks_work": bg}
        if probability is not None:
            state["pred"] = probability[None]
        fuse = self.options.proposal != "gc" if fuse is None else fuse
        seeded = self.options.seed_radius > 0 and previous is not None
        depths = None  # the clicks' depths in ``previous``, foreground first, when an option needs them
        if len(fg) + len(bg) and ((fuse and self.options.depth_reach) or seeded):
            depths = boundary_depth(previous, np.concatenate([fg, bg]), data["work_spacing"])
        if fuse and len(fg) + len(bg):
            state["pred"] = temper_probability(np.asarray(state["pred"]), self.options.temperature)
            state["distance_fg"], state["distance_bg"] = self._distance_maps(data, fg, bg, previous, depths)
            state = self._fusion(state)
        if seeded and depths is not None:
            state["fg_clicks_work"], state["bg_clicks_work"] = self._seed_balls(data, fg, bg, depths, np.shape(previous))
        return self._graph_cut(state)["pred"][0]

    def _seed_balls(self, data: dict, fg: np.ndarray, bg: np.ndarray, depths: np.ndarray,
                    shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Each kind's hard seeds with ``seed_radius``: the voxels of the work grid (``shape``)
        within ``seed_radius`` times a click's depth (``depths``, foreground clicks first) of
        it, at most ``seed_limit`` work voxels, ``(N, ndim)`` (the clicks included)."""
        sp = np.asarray(data["work_spacing"], dtype=np.float64)
        reaches = self.options.seed_radius * np.asarray(depths)
        if self.options.seed_limit > 0:
            reaches = np.minimum(reaches, self.options.seed_limit * float(sp.min()))
        seeds = []
        for points, kind_reaches in ((fg, reaches[:len(fg)]), (bg, reaches[len(fg):])):
            voxels = [points]
            for point, reach in zip(points, kind_reaches):
                box, inside = ball(point, reach, sp, shape)
                voxels.append(np.argwhere(inside) + [b.start for b in box])
            seeds.append(np.concatenate(voxels).astype(np.int64))
        return seeds[0], seeds[1]

    def _click_map(self, data: dict, point: np.ndarray, depth: float | None, depths: np.ndarray | None = None) -> np.ndarray:
        """One click's distance map: :func:`click_distance` (``depth`` None), else its
        geodesic distance plus a spatial term in units of ``depth``: the Euclidean distance to
        the click, or with ``depths`` (:func:`signed_depth` of the previous mask) the depth
        difference (``spatial_term "depth"``), plus the Euclidean distance over ``band_reach``
        (``"band"``)."""
        if depth is None:
            return self.distances.distance(data, point[None])
        geodesic = self.distances.distance(data, point[None], 0.0)
        if depths is None:
            spatial = self._euclidean(data, point)
        else:
            spatial = np.abs(depths - depths[tuple(point)])
            if self.options.spatial_term == "band":
                spatial = spatial + self._euclidean(data, point) / self.options.band_reach
        return self.options.geodesic_weight * geodesic + (self.options.spatial_weight / depth) * spatial

    def _euclidean(self, data: dict, point: np.ndarray) -> np.ndarray:
        """A click's Euclidean distance map (physical) on the work grid, cached per crop."""
        key = (data["work_cache_key"], point.tobytes())
        euclid = self._euclid.get(key)
        if euclid is None:
            sp = np.asarray(data["work_spacing"], dtype=np.float64)
            size = data["work_image"].shape[1:]
            grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(size, point, sp)], indexing="ij", sparse=True)
            euclid = np.sqrt(sum(g**2 for g in grids))
            self._euclid.put(key, euclid)
        return euclid

    def _distance_maps(self, data: dict, fg: np.ndarray, bg: np.ndarray, previous: np.ndarray,
                       depths: np.ndarray | None = None) -> tuple:
        """``(D^f, D^b)`` of one state's clicks with the options' seed sets (with the paper's
        options exactly :func:`lib.transforms.fusion.click_distances`); ``depths``: the clicks'
        :func:`boundary_depth` in ``previous`` (foreground first), when already measured."""
        margin = data["margin_points_work"]
        fg_maps, bg_maps = [], []
        along = None
        if self.options.depth_reach and self.options.spatial_term != "euclidean" and len(fg) + len(bg):
            along = signed_depth(previous, data["work_spacing"])
        if not self.options.depth_reach:
            depths = [None] * (len(fg) + len(bg))
        elif depths is None:  # both kinds in one pass over the boundary
            depths = boundary_depth(previous, np.concatenate([fg, bg]), data["work_spacing"])
        for points, maps, click_depths in ((fg, fg_maps, depths[:len(fg)]), (bg, bg_maps, depths[len(fg):])):
            maps.extend(self._click_map(data, p, d, along) for p, d in zip(points, click_depths))
        if self.options.fusion_margin and len(margin):
            fg_maps.append(self.distances.distance(data, margin))
        if self.options.border_background:
            bg_maps.append(self.distances.distance(data, self._border(data)))
        return tuple(np.minimum.reduce(m) if m else None for m in (fg_maps, bg_maps))

    def propose(self, data: dict, states, previous) -> list[np.ndarray]:
        """The proposals ``R`` of ``states``, each refining its ``previous`` mask and bounded
        against it (:meth:`_bound`)."""
        if data.get("deadline") is not None:
            data["deadline"].check(f"{len(states)} refinement state(s)")
        fg_all, bg_all = data["fg_clicks_work"], data["bg_clicks_work"]
        clicks = [(fg_all[:i], bg_all[:j]) for i, j in states]
        if self.options.proposal == "learned" and "stage1_input" in data:  # not for an uploaded label
            probabilities = self.learned(data, clicks, previous)
            masks = [self._learned_mask(data, fg, bg, prev, p) for (fg, bg), prev, p in zip(clicks, previous, probabilities)]
        elif self.options.proposal == "geodesic":
            masks = [self._nearest_seed(data, fg, bg, prev) for (fg, bg), prev in zip(clicks, previous)]
        else:
            masks = [self._cut(data, fg, bg, prev) for (fg, bg), prev in zip(clicks, previous)]
        return [self._bound(data, mask, prev, fg, bg) for mask, prev, (fg, bg) in zip(masks, previous, clicks)]

    def _bound(self, data: dict, mask: np.ndarray, parent: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
        """One state's proposal (clicks ``fg``, ``bg``) with only the changes from ``parent``
        that its clicks reach: the seeds' claims, the radius limit and the depth limit of the
        options."""
        if self.options.claims != "none":
            mask = self._claimed(data, mask, parent, fg, bg)
        if self.options.radius_limit > 0:
            mask = changes_near_clicks(mask, parent, fg, bg, self.options.radius_limit, data["work_spacing"])
        if self.options.reach_limit > 0:
            return local_changes(mask, parent, fg, bg, self.options.reach_limit, data["work_spacing"])
        if self.options.local:
            return local_changes(mask, parent, fg, bg)
        return mask

    def _border(self, data: dict) -> np.ndarray:
        """The work grid's faces inside the image (:func:`box_border`), once per work crop."""
        border = self._borders.get(data["work_cache_key"])
        if border is None:
            border = box_border(data["work_image"].shape[1:], data["work_box"], data["work_original_shape"])
            self._borders.put(data["work_cache_key"], border)
        return border

    def _seed_distances(self, data: dict, fg: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(distance to the nearest foreground seed, to the nearest background seed)`` of
        one state by :func:`click_distance`: margin points and foreground clicks against
        background clicks and the box faces inside the image; ``None`` when one kind is
        missing."""
        border = self._border(data)
        fg_sets = [p[None] for p in fg] + ([data["margin_points_work"]] if len(data["margin_points_work"]) else [])
        bg_sets = [p[None] for p in bg] + ([border] if len(border) else [])
        if not fg_sets or not bg_sets:
            return None
        return tuple(np.minimum.reduce([self.distances.distance(data, p) for p in sets]) for sets in (fg_sets, bg_sets))

    def _nearest_seed(self, data: dict, fg: np.ndarray, bg: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Nearest-seed labelling of one state (the ``geodesic`` proposal); ``previous`` when
        one kind of seed is missing (nothing to compete with)."""
        distances = self._seed_distances(data, fg, bg)
        if distances is None:
            return np.asarray(previous, dtype=bool)
        d_fg, d_bg = distances
        mask = d_fg < d_bg
        mask[tuple(fg.T)] = True
        mask[tuple(bg.T)] = False
        return mask

    def _claimed(self, data: dict, mask: np.ndarray, previous: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
        """One state's proposal with only the changes its seeds claim (:func:`claimed_changes`)."""
        distances = self._seed_distances(data, fg, bg)
        if distances is None:
            return np.asarray(mask, dtype=bool)
        claimed = claimed_changes(mask, previous, *distances, additions=self.options.claims == "all")
        claimed[tuple(fg.T)] = True
        claimed[tuple(bg.T)] = False
        return claimed

    def _nearest_click(self, data: dict, state: tuple[int, int], lower: np.ndarray, diagonal: np.ndarray,
                       upper: np.ndarray) -> np.ndarray:
        """State ``(i, j)`` between its bounds (``contest "nearest"``): the voxels foreground
        click ``i`` and background click ``j`` contest (``upper - lower``) go to the nearer of
        the two by :func:`click_distance`, as a change of ``diagonal`` (the state without
        either) bounded like a proposal's (:meth:`_bound`)."""
        contested = upper & ~lower
        if not contested.any():
            return lower
        i, j = state
        fg, bg = data["fg_clicks_work"][:i], data["bg_clicks_work"][:j]
        nearer_fg = self.distances.distance(data, fg[-1][None]) < self.distances.distance(data, bg[-1][None])
        mask = np.where(contested, nearer_fg, diagonal)
        return self._bound(data, mask, diagonal, fg, bg)

    def _learned_mask(self, data: dict, fg: np.ndarray, bg: np.ndarray, previous: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """One state's mask from the learned proposal's probability (``learned_cut``)."""
        if self.options.learned_cut != "none":
            return self._cut(data, fg, bg, previous, probability, fuse=self.options.learned_cut == "ifgc")
        mask = probability >= 0.5
        mask[tuple(fg.T)] = True
        mask[tuple(bg.T)] = False
        return mask

    def __call__(self, data: dict) -> dict:
        n, m = len(data["fg_clicks_work"]), len(data["bg_clicks_work"])
        weights = MIDeepSegInfer._model_mtime(self.learned.path) if self.learned is not None else None
        known = {}
        for state in ((i, j) for i in range(n + 1) for j in range(m + 1)):
            cached = self._masks.get(self._state_key(data, state, weights))
            if cached is not None:
                known[state] = cached
        fine = self.image_stage1 is not None and self.image_stage1.applies(data)

        def stage1_cut() -> np.ndarray:  # the graph cut of the stage-1 probability on the work grid
            return self._cut({**data, "sigma": stage1_sigma(data)}, data["fg_clicks_work"][:0], data["bg_clicks_work"][:0], None)

        if fine:  # M(0, 0) is the image-resolution stage 1 on the work grid
            data["stage1_image_mask"], work = self.image_stage1(data, stage1_cut)
        if (0, 0) not in known:  # the stage-1 cut: cached like every other state
            known[(0, 0)] = work if fine else stage1_cut()
            self._masks.put(self._state_key(data, (0, 0), weights), known[(0, 0)])
        data["stage1_work_mask"] = known[(0, 0)]
        if not self.options.monotone and n + m:  # one proposal for all clicks, refining the stage-1 mask
            data["pred"] = np.asarray(self.propose(data, [(n, m)], [known[(0, 0)]])[0]).astype(np.uint8)[None]
            return data
        contest = functools.partial(self._nearest_click, data) if self.options.contest == "nearest" else None
        masks = monotone_masks(n, m, known[(0, 0)], lambda states, prev: self.propose(data, states, prev), known,
                               self.options.previous, contest)
        for state, mask in masks.items():
            if state not in known:
                self._masks.put(self._state_key(data, state, weights), mask)
        data["pred"] = masks[(n, m)].astype(np.uint8)[None]
        return data


def refinement_weights_path(stage1_path: str) -> str:
    """Where the learned refinement of the stage-1 weights ``<model>.pt`` lives by default:
    ``<model>_refine.pt`` beside them."""
    root, ext = os.path.splitext(stage1_path)
    return f"{root}_refine{ext}"


class _LearnedProposal:
    """Foreground probabilities of the learned refinement U-Net for a batch of states: the
    stage-1 crop plus the EGDs of the state's clicks and its previous mask
    (:func:`refinement_input`) on the refinement network's grid (its checkpoint's
    ``"grid"``, default the stage-1 grid; on another grid the stage-1 crop is resampled and
    z-scored again and the margin EGD recomputed there, as the trainer builds its crops),
    resampled to the work grid. The EGD of each click set is cached: the states of a new
    click share one click list's prefix."""

    def __init__(self, task: MIDeepSegInfer, path: str | None) -> None:
        self.task = task
        self._cues = LRUCache(256)
        base = task.path[0] if isinstance(task.path, (list, tuple)) and task.path else task.path
        self.path = path or (refinement_weights_path(str(base)) if base else None)
        self._network: torch.nn.Module | None = None
        self._loaded: tuple | None = None  # (device, weights file mtime) of the network held
        self.grid: tuple[int, ...] = task.network_grid()
        self._lock = threading.Lock()

    def network(self, device: str) -> torch.nn.Module:
        """The refinement U-Net, reloaded when its weights file changes (a training run
        publishes it atomically); without the file, one initialised from the stage-1
        network (:func:`refinement_from_stage1`: it answers what stage 1 answers, and the
        clicks then act through the monotone combination's hard labels only)."""
        with self._lock:
            loaded = (str(device), MIDeepSegInfer._model_mtime(self.path))
            if self._network is None or loaded != self._loaded:
                self._loaded = loaded
                self.grid = self.task.network_grid()
                if self.path and os.path.exists(self.path):
                    net, grid = load_unet(self.path, self.task.dimension, REFINEMENT_IN_CHANNELS)
                    self.grid = grid or self.grid
                else:
                    logger.warning("refinement 'learned': no weights at %s, using the stage-1 network", self.path)
                    net = refinement_from_stage1(self.task._get_network("cpu", None).state_dict(), self.task.dimension)
                self._network = net.to(device).eval()
            return self._network

    def __call__(self, data: dict, clicks, previous) -> list[np.ndarray]:
        device = str(data.get("device", "cpu"))
        network = self.network(device)
        grid = self.grid
        work_size = data["work_image"].shape[1:]
        work_box = np.stack([np.zeros(len(work_size), np.int64), np.asarray(work_size)])  # the same box, on the work grid
        image, cue = self._stage1_crop(data, grid, work_box)

        def click_cue(points: np.ndarray) -> np.ndarray:
            key = (data["stage1_key"], grid, points.tobytes())
            cached = self._cues.get(key)
            if cached is None:
                cached = cue_map(image, points, "egd")
                self._cues.put(key, cached)
            return cached

        inputs = []
        previous_grid = resample(np.stack([np.asarray(p, dtype=np.float32) for p in previous]), grid, "bilinear")
        for (fg, bg), prev_grid in zip(clicks, previous_grid):
            grid_fg, grid_bg = (points_to_crop(p, work_box, grid) for p in (fg, bg))
            inputs.append(refinement_input(image, cue, grid_fg, grid_bg, prev_grid, click_cue=click_cue))
        x = torch.as_tensor(np.stack(inputs)).to(device)
        prob = predict_probability(network, x, inference_dtype(self.task.precision, device))[:, 1].cpu().numpy()
        return list(resample(prob, work_size, "bilinear"))

    def _stage1_crop(self, data: dict, grid: tuple[int, ...], work_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image, margin EGD) of the stage-1 crop on ``grid`` (cached per stage-1 result)."""
        image, cue = data["stage1_input"]
        if tuple(image.shape) == grid:
            return image, cue
        key = ("stage1 crop", data["stage1_key"], grid)
        cached = self._cues.get(key)
        if cached is None:
            small = np.asarray(NormalizeIntensity()(resample(image[None], grid, "bilinear")[0]), dtype=np.float32)
            cached = (small, cue_map(small, points_to_crop(data["margin_points_work"], work_box, grid), "egd"))
            self._cues.put(key, cached)
        return cached
