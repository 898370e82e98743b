"""MIDeepSeg as a MONAI Label ``deepgrow`` infer task (2D or 3D).

Request: ``foreground``/``background`` voxel indices (all points so far, in order),
``margin_points`` (how many leading foreground points are interior margin points),
``lamda``/``sigma`` (graph cut). Pipeline: load (cached) -> [2D model on a 3D image: the
clicked slice] -> split clicks -> crop the relaxed box at (capped) original resolution ->
stage 1: network crop + EGD + U-Net (cached per image and margin points) -> post: information
fusion (only with refinement clicks) + graph cut -> back to the original geometry -> clicked
voxels forced -> uint8 label.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import HTTPException
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer, write_itk

from lib.infers.image_cache import CachedLoadImaged, LRUCache
from lib.networks import inference_dtype, predict_probability
from lib.transforms.clicks import MIN_MARGIN_POINTS, ApplyClicksd, ParseClicksd, PasteSliced, SelectSliced
from lib.transforms.crop import CropByMarginPointsd, RestoreFromCropd, points_to_crop, resample
from lib.transforms.cues import check_encoding
from lib.transforms.fusion import InformationFusiond, click_distance, seed_groups
from lib.transforms.graph_cut import DEFAULT_LAMDA, DEFAULT_SIGMA, GraphCutd
from lib.transforms.stage1 import crop_transforms, cue_transforms

logger = logging.getLogger(__name__)

# Refinement (fusion + graph cut) runs on the relaxed box at original resolution, shrunk to
# at most this many voxels so that a click answers interactively on a CPU. 3D: on the
# held-out BraTS case (soft network output) the max-flow took 0.35-0.75 s per click at 64^3
# and 0.07-0.23 s at 48^3, with the same Dice after 5 robot clicks (0.857 vs 0.862).
WORK_VOXELS = {2: 160 * 160, 3: 48 * 48 * 48}
WORK_KEYS = {"margin_key": "margin_points_work", "foreground_key": "foreground_work", "background_key": "background_work"}


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
        **kwargs,
    ) -> None:
        super().__init__(
            path=path,
            network=network,
            type=InferType.DEEPGROW,
            labels=list(labels),
            dimension=dimension,
            description=description,
            config={"margin_points": margin_points, "lamda": DEFAULT_LAMDA, "sigma": DEFAULT_SIGMA},
            load_strict=True,
            **kwargs,
        )
        self.spatial_size = tuple(spatial_size)
        self.default_margin_points = margin_points
        self.work_voxels = work_voxels or WORK_VOXELS[dimension]
        inference_dtype(precision, "cpu")  # fail at start-up on an unknown precision
        self.precision = precision
        self.cue = check_encoding(cue)
        self._loader = CachedLoadImaged(keys="image")
        self._work_crop = _CachedWorkCrop(self.work_voxels)
        self._distances = _CachedClickDistances()
        self._stage1_cache = LRUCache(16)

    def warm_up(self, device: str) -> None:
        """Load the weights and run the network once on a blank input, so that the one-off
        set-up of the first forward pass (about 1 s for the 3D U-Net on a CPU) happens at
        server start, not on the annotator's first click."""
        start = time.perf_counter()
        network = self._get_network(device, None)
        dtype = inference_dtype(self.precision, device)
        predict_probability(network, torch.zeros((1, 2, *self.spatial_size), device=device), dtype)
        logger.info("%dD network ready on %s (%s) in %.1f s", self.dimension, device, dtype, time.perf_counter() - start)

    def __call__(self, request, callbacks=None):
        _check_graph_cut_params(request)
        try:
            return super().__call__(request, callbacks)
        except MarginPointsIncomplete as waiting:
            return self._empty_result(waiting.data)
        except FileNotFoundError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        transforms: list = [self._loader]
        if self.dimension == 2:
            transforms.append(SelectSliced(keys="image"))
        transforms += [
            ParseClicksd(keys="image", default_count=self.default_margin_points),
            _StopWhenIncomplete(),
            self._work_crop,
        ]
        return transforms

    def inferer(self, data=None):
        return None

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        """Stage 1: U-Net foreground probability on the work grid, cached per image, slice,
        margin points and model file."""
        timing = data.setdefault("timing", {})
        model_path = self.get_path()
        key = (
            data.get("image_cache_key"),
            data.get("slice"),
            np.asarray(data["margin_points"]).tobytes(),
            model_path,
            self._model_mtime(model_path),
            str(device),
        )
        cached = self._stage1_cache.get(key)
        if cached is None:
            start = time.perf_counter()
            crop = Compose(crop_transforms(self.spatial_size))(
                {"image": data["image"], "margin_points": data["margin_points"], "spacing": data.get("spacing")}
            )
            net_input = Compose(cue_transforms(self.cue))(crop)["image"]
            timing["egd"] = time.perf_counter() - start
            start = time.perf_counter()
            network = self._get_network(device, data)
            net_input = torch.as_tensor(np.asarray(net_input), dtype=torch.float32)[None].to(device)
            prob = predict_probability(network, net_input, inference_dtype(self.precision, device))[0].cpu().numpy()
            cached = resample(prob[1:], data["work_image"].shape[1:], "bilinear")  # foreground only
            self._stage1_cache.put(key, cached)
            timing["network"] = time.perf_counter() - start
        data["stage1_cached"] = "network" not in timing
        data["pred"] = cached
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            self._distances,
            InformationFusiond(keys="pred", image_key="work_image", **WORK_KEYS),
            GraphCutd(keys="pred", image_key="work_image", spacing_key="work_spacing", **WORK_KEYS),
            _RestoreAndBinarise(),
            ApplyClicksd(keys="pred"),
            PasteSliced(keys="pred"),
        ]

    def run_post_transforms(self, data: dict[str, Any], transforms) -> dict:
        timing = data.setdefault("timing", {})
        names = {_CachedClickDistances: "fusion", InformationFusiond: "fusion", GraphCutd: "graph_cut"}
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
        refinement = len(data["foreground"]) + len(data["background"])
        data["result"] = {
            "stage": 2 if refinement else 1,
            "margin_points": len(data["margin_points"]),
            "refinement_clicks": int(refinement),
            "stage1_cached": bool(data.get("stage1_cached")),
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

    @staticmethod
    def _model_mtime(path: str | None) -> float:
        return os.path.getmtime(path) if path and os.path.exists(path) else 0.0


def _check_graph_cut_params(request: dict) -> None:
    """``lamda`` >= 0 and ``sigma`` > 0, finite numbers (or numeric strings, as Slicer's
    option fields send them): answer 400 naming the parameter before any work is done."""
    for name, positive in (("lamda", False), ("sigma", True)):
        if name not in request:
            continue
        value = request[name]
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise HTTPException(status_code=400, detail=f"{name} must be a number, got {value!r}") from None
        if not np.isfinite(number) or number < 0 or (positive and number == 0):
            bound = "> 0" if positive else ">= 0"
            raise HTTPException(status_code=400, detail=f"{name} must be a finite number {bound}, got {value!r}")


class _StopWhenIncomplete:
    """Stop the pipeline (and answer an empty label) until two margin points are in."""

    def __call__(self, data: dict) -> dict:
        if len(data["margin_points"]) < MIN_MARGIN_POINTS:
            raise MarginPointsIncomplete(data)
        return data


class _RestoreAndBinarise:
    """Work-grid mask -> original grid (linear interpolation, threshold 0.5)."""

    def __init__(self) -> None:
        self._restore = RestoreFromCropd(keys="pred", prefix="work", mode="bilinear")

    def __call__(self, data: dict) -> dict:
        data = self._restore(data)
        data["pred"] = (np.asarray(data["pred"]) >= 0.5).astype(np.uint8)
        return data


class _CachedWorkCrop:
    """The relaxed box of the margin points at (capped) original resolution, as
    ``CropByMarginPointsd(prefix="work")`` writes it, cached per image, slice and margin
    points; only the clicks are mapped anew on each request. Refinement clicks outside the
    box are left out of the work grid (clipping them onto its border would move them); the
    label is forced at them in the final mask all the same (:class:`ApplyClicksd`)."""

    POINT_KEYS = ("margin_points", "foreground", "background")
    KEYS = ("work_image", "work_box", "work_original_shape", "work_spacing")

    def __init__(self, max_voxels: int) -> None:
        self._crop = CropByMarginPointsd(
            keys="work_image", spatial_size=None, max_voxels=max_voxels, prefix="work", point_keys=()
        )
        self._cache = LRUCache(8)

    def __call__(self, data: dict) -> dict:
        key = (data.get("image_cache_key"), data.get("slice"), np.asarray(data["margin_points"]).tobytes())
        cached = self._cache.get(key)
        if cached is None:
            out = self._crop({"work_image": data["image"], "margin_points": data["margin_points"], "spacing": data.get("spacing")})
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
    """The fusion's distance maps ``distance_fg``/``distance_bg`` on the work grid, exactly
    :func:`click_distances` (minimum over :func:`seed_groups`), with each seed set's map
    cached across requests: a new click costs one raster scan."""

    def __init__(self) -> None:
        self._cache = LRUCache(256)

    def _distance(self, data: dict, points: np.ndarray) -> np.ndarray:
        key = (data["work_cache_key"], np.asarray(points).tobytes())
        dist = self._cache.get(key)
        if dist is None:
            dist = click_distance(data["work_image"][0], points, data["work_spacing"])
            self._cache.put(key, dist)
        return dist

    def __call__(self, data: dict) -> dict:
        fg, bg = data["foreground_work"], data["background_work"]
        if len(fg) + len(bg) == 0:
            return data
        margin = data["margin_points_work"]
        for name, groups in (("distance_fg", seed_groups(margin, fg)), ("distance_bg", seed_groups(margin[:0], bg))):
            maps = [self._distance(data, g) for g in groups]
            data[name] = np.minimum.reduce(maps) if maps else None
        return data
