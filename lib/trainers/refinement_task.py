"""The learned refinement's MONAI Label train task (``/train/<model>_refine``).

The learned refinement network is trained on the errors of one stage-1 network: a refinement
trained on another stage 1 answers clicks worse (docs/experiments.md, "Session 14"). A team that retrains
stage 1 through ``/train/<model>`` therefore retrains the refinement after it, on the same
labels, against the stage-1 weights just published: ``POST /train/`` runs the app's trainers
in order, stage 1 first.

Per run (:func:`lib.trainers.refinement_train.train`, iterative click training): the
datastore's labelled images, split by image into training and validation objects
(``val_split``; with no validation image the training objects validate), a wall-time budget
of ``minutes``, continuing from the published refinement weights when there are any (on
their grid). Those weights are validated first, against the current stage 1: only a
checkpoint that beats them is published, so a run that improves nothing changes nothing. The
best checkpoint is written under the task's work folder, then published atomically to the file
the infer task reads, which reloads it on its next click.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.trainers.handlers import save_atomic
from lib.trainers.midepseg_train import IMAGE_SUBJECT_PATTERN, TRAIN_PRECISIONS
from lib.trainers.refinement_train import VAL_CLICKS, split_objects, train

logger = logging.getLogger(__name__)

# Request options and their defaults (``POST /train/<model>_refine`` with a JSON body).
DEFAULTS: dict[str, Any] = {
    "minutes": 30.0,  # wall-time budget of the run
    "val_split": 0.2,
    "lr": 1e-4,  # a continuation's rate (session 14 continued the shipped network at 1e-4)
    "batch_size": 16,
    "max_rounds": 5,
    "jitter": 0.3,
    "val_every": 100,
    "seed": 0,
    "precision": "float32",
}
# What each option may be: (test, the rule in words for the error message).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "minutes": (lambda v: v > 0, "> 0"),
    "val_split": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "max_rounds": (lambda v: v >= 0, ">= 0"),
    "jitter": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "val_every": (lambda v: v >= 1, ">= 1"),
    "precision": (lambda v: v in TRAIN_PRECISIONS, f"one of {', '.join(TRAIN_PRECISIONS)}"),
}


class MIDeepSegRefinementTrain(TrainTask):
    """Train the learned refinement of one model on the datastore's labels.

    Args:
        dimension: 2 or 3.
        stage1_path: the model's stage-1 weights (what ``/train/<model>`` publishes); the
            frozen network whose errors the refinement learns to correct.
        publish_path: the refinement weights the infer task reads (``<model>_refine.pt``).
        work_dir: the runs' folder (checkpoint and learning curves of the last run).
    """

    def __init__(self, dimension: int, stage1_path: str, publish_path: str, work_dir: str) -> None:
        super().__init__("Train the learned refinement on the labelled images with simulated corrective clicks, "
                         "against the model's published stage-1 network")
        self.dimension = dimension
        self.stage1_path = stage1_path
        self.publish_path = publish_path
        self.work_dir = work_dir

    def config(self) -> dict:
        return dict(DEFAULTS)

    def _checkpoint(self) -> str:
        return os.path.join(self.work_dir, os.path.basename(self.publish_path))

    def stats(self) -> dict:
        """The last run's learning curves (validation Dice after 0/1/3/5 clicks per check)."""
        curves = os.path.splitext(self._checkpoint())[0] + ".curves.json"
        if not os.path.isfile(curves):
            return {}
        with open(curves) as f:
            return json.load(f)

    def options(self, request: dict) -> dict:
        """The run's options: :data:`DEFAULTS` updated by the request's, typed as the defaults;
        an unusable value is a ``ValueError`` naming it."""
        out = dict(DEFAULTS)
        for key, default in DEFAULTS.items():
            if key not in request:
                continue
            try:
                out[key] = type(default)(request[key])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{key}: expected a {type(default).__name__}, got {request[key]!r}") from e
        for key, (valid, allowed) in RANGES.items():
            if not valid(out[key]):
                raise ValueError(f"{key} must be {allowed}, got {out[key]!r}")
        return out

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        opts = self.options(request)
        if not os.path.isfile(self.stage1_path):
            raise ValueError(f"no stage-1 weights at {self.stage1_path}: train the stage-1 model first")
        datalist = sorted(datastore.datalist(), key=lambda d: str(d["image"]))
        if not datalist:
            raise ValueError("no labelled image in the datastore: save final labels first")
        objects, val_objects = split_objects(datalist, self.dimension, opts["val_split"], IMAGE_SUBJECT_PATTERN, opts["seed"])
        if not objects:
            raise ValueError(f"none of the {len(datalist)} labelled images holds a {self.dimension}D object for training")
        if not val_objects:
            logger.warning("no validation image: the checkpoint is chosen on the %d training objects", len(objects))
            val_objects = objects
        resume = self.publish_path if os.path.isfile(self.publish_path) else None
        os.makedirs(self.work_dir, exist_ok=True)
        checkpoint = self._checkpoint()
        if os.path.exists(checkpoint):
            os.remove(checkpoint)  # only this run's best may be published
        logger.info("refinement training: %d training, %d validation objects, %.1f min, from %s",
                    len(objects), len(val_objects), opts["minutes"], resume or "the stage-1 weights")
        curves = train(objects, val_objects, self.dimension, self.stage1_path, checkpoint, opts["minutes"],
                       opts["batch_size"], opts["lr"], opts["max_rounds"], opts["jitter"], opts["val_every"],
                       opts["seed"], resume=resume, precision=opts["precision"], validate_start=resume is not None)
        scores = [float(np.mean([v[k] for k in VAL_CLICKS])) for v in curves["val"]]
        result = {"steps": curves["steps"], "training_objects": len(objects), "validation_objects": len(val_objects),
                  "start_validation_dice": scores[0] if resume and scores else None,
                  "best_validation_dice": max(scores) if scores else None,
                  "published": None}
        if not os.path.isfile(checkpoint):
            logger.warning("refinement: nothing beat the published weights on validation (%s); %s kept",
                           " -> ".join(f"{v:.4f}" for v in scores) or "no step made", self.publish_path)
            return result
        save_atomic(torch.load(checkpoint, map_location="cpu", weights_only=True), self.publish_path)
        logger.info("refinement published to %s after %d steps", self.publish_path, curves["steps"])
        return {**result, "published": self.publish_path}
