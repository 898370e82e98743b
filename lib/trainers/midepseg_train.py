"""Dice-loss training of the MIDeepSeg networks as a MONAI Label train task.

Pipeline per sample, re-drawn every epoch: load -> crop to the object with context (cached)
-> spatial augmentation (rotation, scaling, flips) -> simulated interior margin points ->
relaxed-box crop resized to the network grid -> z-score -> intensity augmentation (gamma,
noise, blur, inversion) -> EGD cue -> U-Net -> Dice loss. Validation uses deterministic
extreme margin points and reports Dice on the network grid.

Distributed: under ``torchrun`` the same task trains as one rank of a DistributedDataParallel
job (gloo between CPU processes, NCCL between GPUs; ``lib/trainers/distributed.py``); MONAI
Label's own multi-GPU ``/train`` (``{"multi_gpu": true}``) spawns one process per GPU
into the same code path. Every rank holds the whole datalist and a ``DistributedSampler``
gives it a disjoint part of each epoch's shuffle; rank 0 alone checkpoints, publishes,
writes the curves and shows the progress bar.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from typing import Callable, Sequence

import numpy as np
import torch
import ignite.distributed
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Events
from monai.data import DistributedSampler, ThreadDataLoader
from monai.handlers import LrScheduleHandler
from monai.inferers import SimpleInferer
from monai.losses import DiceLoss
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandZoomd,
    SelectItemsd,
)
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from torch.nn.parallel import DistributedDataParallel

from lib.trainers.distributed import Launch, launch_from_env, weights_digest
from lib.trainers.handlers import AtomicPublisher, LearningCurves
from lib.transforms.intensity import Luminanced
from lib.transforms.margin_points import ExtremeMarginPointsd, SimulateMarginPointsd
from lib.transforms.cues import check_encoding
from lib.transforms.stage1 import crop_transforms, cue_transforms

logger = logging.getLogger(__name__)

# Context kept around the object before augmentation (voxels); must exceed the relaxed-box
# margin plus the inward move of the margin points.
OBJECT_CONTEXT = {2: 48, 3: 24}
TRAIN_PRECISIONS = ("float32", "bfloat16")
# A datastore image's subject: its file name without the extension (each image its own).
IMAGE_SUBJECT_PATTERN = r"^(.*?)(?:\.nii\.gz|\.nii|\.nrrd|\.png|\.jpg)?$"


class CPUAutocastInferer(SimpleInferer):
    """The network's forward pass under CPU bfloat16 autocast, its output back in float32
    (the loss and the metrics stay float32). On a CPU with native bfloat16 a 3D training
    step (batch 2, 64 x 64 x 48) took 1.6 s instead of 2.2 s here."""

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float()


def halving_schedule(max_epochs: int) -> Callable[[int], float]:
    """The paper's learning-rate schedule scaled to ``max_epochs``: constant for the first
    half, then halved every tenth of the run (2D: 150 of 300 epochs, then every 30)."""
    keep = max_epochs // 2
    step = max(1, max_epochs // 10)

    def factor(epoch: int) -> float:
        return 1.0 if epoch < keep else 0.5 ** ((epoch - keep) // step + 1)

    return factor


def group_partition(
    datalist: Sequence[dict], val_fraction: float, pattern: str, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split a datalist by subject: items whose image file name gives the same ``pattern``
    match (first group) land on the same side. Deterministic for a given ``seed``."""
    regex = re.compile(pattern)

    def subject(item: dict) -> str:
        name = os.path.basename(str(item["image"]))
        m = regex.search(name)
        return m.group(1) if m and m.groups() else (m.group(0) if m else name)

    groups = sorted({subject(d) for d in datalist})
    rng = np.random.RandomState(seed)
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val_groups = set(rng.permutation(groups)[:n_val].tolist())
    train = [d for d in datalist if subject(d) not in val_groups]
    val = [d for d in datalist if subject(d) in val_groups]
    return train, val


class MIDeepSegTrain(BasicTrainTask):
    """Train the 2D or 3D MIDeepSeg U-Net on the datastore's final labels (object = label > 0).

    Args:
        model_dir: where runs and checkpoints go.
        network: the U-Net (``lib.networks.midepseg_unet``).
        spatial_dims: 2 or 3.
        spatial_size: network input grid, e.g. ``(64, 64)`` or ``(96, 96, 64)``.
        publish_path: the model file the infer task reads; the best checkpoint is published
            there atomically as ``{"model": state_dict, "grid": spatial_size}`` (the infer
            task runs the network on the grid it was trained on).
        lr: Adam learning rate (weight decay 1e-4).
        subject_pattern: regex on image file names whose first group names the subject,
            so that validation holds out whole subjects.
        cue: the cue encoding of the margin points (``lib.transforms.cues``).
        precision: ``"float32"``, or ``"bfloat16"`` (on a CPU device the forward passes run
            under autocast: :class:`CPUAutocastInferer`).
    """

    def __init__(
        self,
        model_dir: str,
        network: torch.nn.Module,
        spatial_dims: int,
        spatial_size: Sequence[int],
        publish_path: str,
        description: str = "Train MIDeepSeg on simulated interior margin points with a Dice loss",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        subject_pattern: str = IMAGE_SUBJECT_PATTERN,
        cue: str = "egd",
        precision: str = "float32",
        config: dict | None = None,
        **kwargs,
    ) -> None:
        if precision not in TRAIN_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAIN_PRECISIONS}, got {precision!r}")
        self.precision = precision
        self._network = network
        self.spatial_dims = spatial_dims
        self.spatial_size = tuple(spatial_size)
        self.lr = lr
        self.weight_decay = weight_decay
        self.subject_pattern = subject_pattern
        self.cue = check_encoding(cue)
        self._final_publish_path = publish_path
        self._launch: Launch | None = None
        # What this process trained, for comparing ranks (set by a run): the SHA-256 of its
        # final weights, and per epoch the image names its sampler gave it (distributed runs).
        self.final_weights_digest: str | None = None
        self.epoch_shards: dict[int, list[str]] = {}
        defaults = {
            "max_epochs": 50,
            "train_batch_size": 4 if spatial_dims == 2 else 2,
            "val_batch_size": 1,
            "val_split": 0.2,
            "dataset": "CacheDataset",
            "dataloader": "ThreadDataLoader",
            "multi_gpu": False,
            "tracking": "None",  # no MLflow store: runs log to files and the console
            "seed": 0,
        }
        defaults.update(config or {})
        kwargs.setdefault("amp", torch.cuda.is_available())
        # Publishing is done by AtomicPublisher (MONAI Label's copies the file in place).
        super().__init__(
            model_dir,
            description,
            config=defaults,
            load_path=publish_path,
            publish_path=None,
            disable_meta_tracking=False,
            **kwargs,
        )

    def network(self, context: Context) -> torch.nn.Module:
        return self._network

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        return torch.optim.Adam(context.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def loss_function(self, context: Context) -> DiceLoss:
        return DiceLoss(to_onehot_y=True, softmax=True)

    def lr_scheduler_handler(self, context: Context) -> LrScheduleHandler:
        scheduler = torch.optim.lr_scheduler.LambdaLR(context.optimizer, halving_schedule(context.max_epochs))
        return LrScheduleHandler(lr_scheduler=scheduler, print_lr=False)

    def partition_datalist(self, context: Context, shuffle: bool = False):
        if context.request.get("val_ds") or context.request.get("train_ds"):
            return super().partition_datalist(context, shuffle)
        # In file-name order: the ranks of a distributed run must index the same items.
        datalist = sorted(context.datalist, key=lambda d: str(d["image"]))
        return group_partition(
            datalist, float(context.request.get("val_split", 0.0)), self.subject_pattern,
            int(context.request.get("seed", 0)),
        )

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        """Train as MONAI Label does (one process, or its multi-GPU spawn), or, when started
        by torchrun with more than one process, as this process's rank of the job."""
        launch = launch_from_env()
        if launch is None:
            return super().__call__(request, datastore)
        req = copy.deepcopy(self._config)
        req.update(copy.deepcopy(request))
        req.update(run_id=launch.run_id, device=launch.device(), multi_gpu=True,
                   distributed_backend=launch.backend, distributed_url="env://")
        self._launch = launch
        datalist = self.pre_process(req, datastore)
        try:
            return self.train(launch.rank, launch.world_size, req, datalist)
        finally:
            self._launch = None
            if launch.rank == 0:
                self.cleanup(req)

    def _device(self, context: Context) -> torch.device:
        """Under torchrun: ``cuda:<local rank>`` or the CPU. MONAI Label's ``train`` hands its
        rank to ignite as the local rank (right for its single-node spawn only), so the
        node-local rank is set again here, before anything uses it."""
        if self._launch is None:
            return super()._device(context)
        os.environ["LOCAL_RANK"] = str(self._launch.local_rank)
        ignite.distributed.set_local_rank(self._launch.local_rank)
        ignite.distributed.sync()
        device = self._launch.device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        logger.info("rank %d of %d on %s", self._launch.rank, self._launch.world_size, device)
        return device

    def _create_network_and_optimizer(self, context: Context):
        """MONAI Label wraps the network in DistributedDataParallel with a GPU index; between
        CPU processes the wrapper takes no device."""
        if not context.multi_gpu or context.device.type == "cuda":
            return super()._create_network_and_optimizer(context)
        single = copy.copy(context)
        single.multi_gpu = False
        network, optimizer = super()._create_network_and_optimizer(single)
        return DistributedDataParallel(network, find_unused_parameters=self._find_unused_parameters), optimizer

    def _dataset(self, context: Context, datalist: list, is_train: bool, replace_rate: float = 0.25):
        """The whole datalist on every rank (the sampler shards it); MONAI Label's fixed
        partition per rank would keep a rank on one part of the data for the whole run."""
        whole = copy.copy(context)
        whole.multi_gpu = False
        return super()._dataset(whole, datalist, is_train, replace_rate)

    def _dataloader(self, context: Context, dataset, batch_size: int, num_workers: int, shuffle: bool = False):
        """Distributed: a ``DistributedSampler`` over the whole dataset, padded so that every
        rank runs the same number of steps (DDP synchronises each one). Training
        (``shuffle``) reshuffles every epoch with the run's seed (MONAI's workflow calls
        ``set_epoch``): each epoch the ranks' parts are disjoint and cover the data.
        Validation splits the set in order; up to ``world_size - 1`` items are counted twice."""
        if not context.multi_gpu:
            return super()._dataloader(context, dataset, batch_size, num_workers, shuffle)
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=int(context.request.get("seed", 0)))
        return ThreadDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)

    def _load_transforms(self) -> list:
        return [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Luminanced(keys="image"),
            AsDiscreted(keys="label", threshold=0.5),
            CropForegroundd(
                keys=["image", "label"], source_key="label", margin=OBJECT_CONTEXT[self.spatial_dims], allow_smaller=True
            ),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=True),
        ]

    def _output_transforms(self) -> list:
        return [
            SelectItemsd(keys=["image", "label"]),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
        ]

    def train_pre_transforms(self, context: Context) -> list:
        keys = ["image", "label"]
        dims = self.spatial_dims
        angle = math.pi / 12
        spatial_aug = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(dims)] + [
            RandRotated(
                keys=keys,
                range_x=angle,
                range_y=angle if dims == 3 else 0.0,
                range_z=angle if dims == 3 else 0.0,
                prob=0.5,
                mode=("bilinear", "nearest"),
                keep_size=True,
            ),
            RandZoomd(keys=keys, min_zoom=0.85, max_zoom=1.15, prob=0.5, mode=("bilinear", "nearest"), keep_size=True),
        ]
        intensity_aug = [
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
            RandGaussianNoised(keys="image", std=0.1, prob=0.2),
            RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
            # Intensity flip: scale by 1 + (-2) = -1 (the crop is already z-scored).
            RandScaleIntensityd(keys="image", factors=(-2.0, -2.0), prob=0.2),
        ]
        return (
            self._load_transforms()
            + spatial_aug  # labels resample with "nearest": they stay 0/1
            + [SimulateMarginPointsd(keys="label")]
            + crop_transforms(self.spatial_size, keys=keys, modes=("bilinear", "nearest"))
            + intensity_aug
            + cue_transforms(self.cue)
            + self._output_transforms()
        )

    def val_pre_transforms(self, context: Context) -> list:
        return (
            self._load_transforms()
            + [ExtremeMarginPointsd(keys="label")]
            + crop_transforms(self.spatial_size, keys=["image", "label"], modes=("bilinear", "nearest"))
            + cue_transforms(self.cue)
            + self._output_transforms()
        )

    def train_post_transforms(self, context: Context) -> list:
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=(2, 2)),
        ]

    def _inferer(self, context: Context) -> SimpleInferer:
        cpu = torch.device(context.device).type == "cpu"
        return CPUAutocastInferer() if self.precision == "bfloat16" and cpu else SimpleInferer()

    def train_inferer(self, context: Context) -> SimpleInferer:
        return self._inferer(context)

    def val_inferer(self, context: Context) -> SimpleInferer:
        return self._inferer(context)

    def train_handlers(self, context: Context) -> list:
        handlers = super().train_handlers(context)
        if context.local_rank == 0:
            handlers.append(ProgressBar(persist=False))
        return handlers

    def finalize(self, context: Context) -> None:
        super().finalize(context)
        seed = int(context.request.get("seed", 0))
        # Each rank its own augmentation draws; rank 0 draws what a single process draws.
        context.trainer.data_loader.dataset.transform.set_random_state(seed=seed + context.local_rank)
        self._record_run(context)
        if context.local_rank != 0:
            return
        LearningCurves(context.output_dir, self.VAL_METRIC_MEAN_DICE).attach(context.trainer, context.evaluator)
        publisher = AtomicPublisher(
            os.path.join(context.output_dir, self._key_metric_filename), self._final_publish_path, self.spatial_size
        )
        publisher.attach(context.evaluator if context.evaluator else context.trainer)

    def _record_run(self, context: Context) -> None:
        """Keep the final weights' digest and, in a distributed run, each epoch's part of the
        training data (image file names), logged at debug level."""
        self.final_weights_digest = None
        self.epoch_shards = {}
        trainer = context.trainer
        sampler = trainer.data_loader.sampler

        def record_shard(engine) -> None:
            names = [os.path.basename(str(context.train_datalist[i]["image"])) for i in sampler]
            self.epoch_shards[engine.state.epoch] = names
            logger.debug("rank %d, epoch %d trains on %s", context.local_rank, engine.state.epoch, names)

        def record_weights(engine) -> None:
            self.final_weights_digest = weights_digest(context.network)
            logger.info("rank %d: final weights sha256 %s", context.local_rank, self.final_weights_digest)

        if isinstance(sampler, DistributedSampler):
            trainer.add_event_handler(Events.EPOCH_STARTED, record_shard)
        trainer.add_event_handler(Events.COMPLETED, record_weights)
