"""Iterative click training of the learned refinement network (issue 10 (c)).

The refinement U-Net (:func:`lib.networks.refinement_from_stage1`, initialised from the
shipped stage-1 weights) sees the stage-1 crop plus the clicks and the previous mask
(:mod:`lib.transforms.refinement_input`). Training follows the iterative scheme of
DeepIGeoS' R-Net and RITM: per batch,

1. draw an object, augment it, simulate interior margin points, crop the relaxed box to the
   network grid (exactly the stage-1 chain);
2. the frozen stage-1 network gives the first mask;
3. ``r`` rounds (uniform in ``0..max_rounds``) without gradient: the robot user adds a
   corrective click on the current mask's largest error region (at its interior-most voxel,
   or with probability ``jitter`` at a random voxel of that region at least 2 voxels from its
   border, as a human would), and the refinement network's answer becomes the mask;
4. one more click, and the Dice + cross-entropy loss of the network's answer.

With ``click_kinds="one"`` each crop's clicks are of one kind, drawn per crop (the robot
then clicks the largest error region of that kind): the states the infer task proposes with
``contest "nearest"``, where a state with clicks of both kinds is decided without the network.

Validation: held-out objects (by subject), deterministic margin points, robot clicks;
Dice after 1, 3 and 5 clicks on the network grid. The best checkpoint (mean of those) is
published atomically as ``{"model": state_dict, "grid": [...]}``: ``--grid`` may be coarser
than the stage-1 grid (3D: 64x64x48 instead of 96x96x64, a quarter of the cost per pass,
so that a click stays interactive), and the infer task resamples the stage-1 crop to it.
``--precision bfloat16`` runs the forward passes under CPU autocast (on a CPU with native
bfloat16 a 3D step took 2.2-2.5 s instead of 3.6-4.3 s at 96x96x64, batch 2).

    python -m lib.trainers.refinement_train --dim 2 --images runs/data/mix2d/images \\
        --labels runs/data/mix2d/labels --minutes 50 --out apps/midepseg/model/midepseg_2d_refine.pt

Under ``torchrun`` (several processes or machines) the same command trains one
DistributedDataParallel network: each rank draws its own batches (seed + rank), the
gradients are averaged, the ranks agree on the elapsed time (the longest) for the
learning-rate halving and the stop, and rank 0 alone validates and publishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from lib.networks import DEFAULT_SPATIAL_SIZE, midepseg_unet, refinement_from_stage1
from lib.trainers.distributed import Launch, launch_from_env, weights_digest
from lib.trainers.handlers import save_atomic
from lib.metrics import dice
from lib.trainers.midepseg_train import OBJECT_CONTEXT, TRAIN_PRECISIONS, group_partition
from lib.transforms.crop import crop_and_resize, points_to_crop, relaxed_box, resample
from lib.transforms.cues import cue_map
from lib.transforms.intensity import luminance
from lib.transforms.margin_points import extreme_margin_points, simulate_margin_points
from lib.transforms.refinement_input import refinement_input
from lib.transforms.robot_user import corrective_click

logger = logging.getLogger(__name__)

# Objects are stored at most this many voxels per side (the network sees 64^2 / 96x96x64
# crops of them; margin-point simulation on full-size ultrasound frames was most of a step).
MAX_SIDE = {2: 192, 3: 128}
VAL_CLICKS = (1, 3, 5)
# The subject of a training file: the anatomy objects' volume (``ana-ct-...``) or the HC18
# subject number (the 2D mix's names).
SUBJECT_PATTERN = r"^(ana-[^_]+|\d+)"


@dataclass
class TrainObject:
    """One object cropped with context: spatial image, binary label, voxel size."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray


def load_objects(pairs: Sequence[tuple[str, str]], dim: int) -> list[TrainObject]:
    """Load (image, label) file pairs; colour images become luminance (as the server reads
    them); each is cropped to its object's bounding box grown by ``OBJECT_CONTEXT`` voxels
    and shrunk to at most ``MAX_SIDE`` voxels per side."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    objects = []
    for image_path, label_path in pairs:
        img = load(image_path)
        arr = np.asarray(img, dtype=np.float32)
        if dim == 2 and arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = luminance(np.moveaxis(arr, -1, 0))[0]
        label = np.asarray(load(label_path)) > 0.5
        if label.ndim == dim + 1 and label.shape[-1] in (3, 4):
            label = label[..., 0]
        if arr.shape != label.shape or arr.ndim != dim or not label.any():
            logger.warning("%s: skipped (image %s, label %s)", image_path, arr.shape, label.shape)
            continue
        spacing = np.asarray(getattr(img, "pixdim", np.ones(dim)), dtype=np.float64)[:dim]
        idx = np.argwhere(label)
        lo = np.maximum(idx.min(0) - OBJECT_CONTEXT[dim], 0)
        hi = np.minimum(idx.max(0) + OBJECT_CONTEXT[dim] + 1, label.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        image, label = arr[box], label[box]
        scale = min(1.0, MAX_SIDE[dim] / max(image.shape))
        if scale < 1.0:
            size = [max(1, int(round(n * scale))) for n in image.shape]
            spacing = spacing * np.asarray(image.shape) / np.asarray(size)
            image = resample(image[None], size, "bilinear")[0]
            label = resample(label[None].astype(np.float32), size, "nearest")[0] > 0.5
        objects.append(TrainObject(Path(image_path).name, image.copy(), label.copy(), spacing))
    return objects


def split_objects(datalist: Sequence[dict], dim: int, val_fraction: float, pattern: str,
                  seed: int = 0) -> tuple[list[TrainObject], list[TrainObject]]:
    """``(training, validation)`` objects of a datalist (``{"image", "label"}`` paths), split by
    subject (:func:`group_partition` with ``pattern``) and loaded with :func:`load_objects`."""
    train_list, val_list = group_partition(datalist, val_fraction, pattern, seed)
    pairs = [[(d["image"], d["label"]) for d in items] for items in (train_list, val_list)]
    return load_objects(pairs[0], dim), load_objects(pairs[1], dim)


def _zscore(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: MONAI's ``NormalizeIntensity``, as stage 1 normalises its crop."""
    return np.asarray(NormalizeIntensity()(image), dtype=np.float32)


def _augment_intensity(image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Gamma, inversion, noise and contrast on a z-scored crop (the stage-1 recipe's kinds)."""
    img = image
    if rng.rand() < 0.3:
        lo, hi = float(img.min()), float(img.max())
        unit = (img - lo) / (hi - lo) if hi > lo else img * 0
        img = _zscore(unit ** rng.uniform(0.7, 1.5))
    if rng.rand() < 0.2:
        img = -img
    if rng.rand() < 0.2:
        img = img + rng.normal(0.0, 0.1, img.shape).astype(np.float32)
    return img.astype(np.float32)


def draw_crop(obj: TrainObject, rng: np.random.RandomState | None, spatial_size: Sequence[int]) -> dict:
    """The stage-1 crop of one object: random flips, simulated margin points and intensity
    augmentation when ``rng`` is given, deterministic extreme margin points otherwise.

    Returns ``{"image": z-scored crop, "cue": margin EGD, "label": bool crop}`` on the grid."""
    image, label = obj.image, obj.label
    if rng is not None:
        for axis in range(image.ndim):
            if rng.rand() < 0.5:
                image, label = np.flip(image, axis), np.flip(label, axis)
        margin = simulate_margin_points(label, rng, obj.spacing)
    else:
        margin = extreme_margin_points(label, obj.spacing)
    box = relaxed_box(margin, label.shape, obj.spacing)
    crop = _zscore(crop_and_resize(np.ascontiguousarray(image)[None], box, spatial_size, "bilinear")[0])
    ref = crop_and_resize(np.ascontiguousarray(label)[None].astype(np.float32), box, spatial_size, "nearest")[0] > 0.5
    cue = cue_map(crop, points_to_crop(margin, box, spatial_size), "egd")
    if rng is not None:
        crop = _augment_intensity(crop, rng)
    return {"image": crop, "cue": cue, "label": ref}


def jittered_click(mask: np.ndarray, reference: np.ndarray, clicked: np.ndarray, rng: np.random.RandomState | None,
                   jitter: float) -> tuple[np.ndarray, bool] | None:
    """The robot's corrective click; with probability ``jitter`` (training only) a random
    voxel of the same error region at least 2 voxels inside it instead of its centre."""
    click = corrective_click(mask, reference, None, clicked)
    if click is None or rng is None or rng.rand() >= jitter:
        return click
    point, is_fg = click
    error = (reference & ~mask) if is_fg else (mask & ~reference)
    labels, _ = ndimage.label(error)
    region = labels == labels[tuple(point)]
    inner = np.argwhere(ndimage.distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim] >= 2)
    return (inner[rng.randint(len(inner))], is_fg) if len(inner) else click


CLICK_KINDS = ("both", "one")
SESSION_KINDS = ("both", "foreground", "background")


class ClickSession:
    """The clicks of one training crop (network-grid indices) and its current mask;
    ``kind``: the clicks the robot places, one of :data:`SESSION_KINDS`."""

    def __init__(self, crop: dict, mask: np.ndarray, kind: str = "both") -> None:
        if kind not in SESSION_KINDS:
            raise ValueError(f"click session kind must be one of {SESSION_KINDS}, got {kind!r}")
        self.crop = crop
        self.mask = mask
        self.kind = kind
        ndim = mask.ndim
        self.fg = np.zeros((0, ndim), dtype=np.int64)
        self.bg = np.zeros((0, ndim), dtype=np.int64)

    def click(self, rng: np.random.RandomState | None, jitter: float) -> None:
        clicked = np.concatenate([self.fg, self.bg])
        label = self.crop["label"]
        seen = self.mask  # the robot sees no error of the other kind when it places one kind
        if self.kind == "foreground":
            seen = self.mask & label
        elif self.kind == "background":
            seen = self.mask | label
        click = jittered_click(seen, label, clicked, rng, jitter)
        if click is None:
            return
        point, is_fg = click
        if is_fg:
            self.fg = np.concatenate([self.fg, point[None]])
        else:
            self.bg = np.concatenate([self.bg, point[None]])

    def network_input(self) -> np.ndarray:
        return refinement_input(self.crop["image"], self.crop["cue"], self.fg, self.bg, self.mask)


def _masks(logits: torch.Tensor) -> list[np.ndarray]:
    return list((logits.argmax(1) == 1).cpu().numpy())


def _stage1_masks(stage1: torch.nn.Module, crops: list[dict]) -> list[np.ndarray]:
    x = torch.as_tensor(np.stack([np.stack([c["image"], c["cue"]]) for c in crops]))
    with torch.no_grad():
        return _masks(stage1(x))


def validate(net: torch.nn.Module, stage1: torch.nn.Module, crops: list[dict], click_kinds: str = "both") -> dict[int, float]:
    """Mean Dice after 0 and after each of ``VAL_CLICKS`` robot clicks on the network grid
    (``click_kinds "one"``: foreground clicks only on every other crop, background clicks only
    on the rest)."""
    net.eval()
    kinds = ["both" if click_kinds == "both" else SESSION_KINDS[1 + k % 2] for k in range(len(crops))]
    sessions = [ClickSession(c, m, kind) for c, m, kind in zip(crops, _stage1_masks(stage1, crops), kinds)]
    out = {0: float(np.mean([dice(s.mask, s.crop["label"]) for s in sessions]))}
    for k in range(1, max(VAL_CLICKS) + 1):
        for s in sessions:
            s.click(None, 0.0)
        with torch.no_grad():
            masks = _masks(net(torch.as_tensor(np.stack([s.network_input() for s in sessions]))))
        for s, m in zip(sessions, masks):
            s.mask = m
        if k in VAL_CLICKS:
            out[k] = float(np.mean([dice(s.mask, s.crop["label"]) for s in sessions]))
    net.train()
    return out


def train(
    objects: list[TrainObject],
    val_objects: list[TrainObject],
    dim: int,
    stage1_path: str,
    out_path: str,
    minutes: float,
    batch_size: int,
    lr: float,
    max_rounds: int,
    jitter: float,
    val_every: int,
    seed: int = 0,
    resume: str | None = None,
    grid: Sequence[int] | None = None,
    precision: str = "float32",
    launch: Launch | None = None,
    click_kinds: str = "both",
    validate_start: bool = False,
) -> dict:
    """Train for ``minutes`` of wall time; returns the curves (also written beside ``out_path``)
    and ``weights_sha256``, the digest of the final weights.
    ``resume``: start from these refinement weights instead of the stage-1 ones; ``grid``:
    the network grid (default: the grid the ``resume`` file records, else the default stage-1
    grid); ``precision``: ``float32`` or ``bfloat16`` (CPU autocast of the forward passes); ``launch``: this process's rank of
    a torchrun job whose process group is initialised (``None``: one process); ``click_kinds``:
    one of :data:`CLICK_KINDS` (module doc); ``validate_start``: validate the starting weights
    first (step 0) and save only weights that beat them, so that a run which makes nothing
    better leaves no file at ``out_path``. The weights are validated every ``val_every`` steps
    and after the last step."""
    rank = launch.rank if launch else 0
    rng = np.random.RandomState(seed + rank)
    torch.manual_seed(seed)
    resumed = torch.load(resume, map_location="cpu", weights_only=True) if resume else {}
    size = tuple(grid or resumed.get("grid") or DEFAULT_SPATIAL_SIZE[dim])
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {precision!r}")
    if click_kinds not in CLICK_KINDS:
        raise ValueError(f"click_kinds must be one of {CLICK_KINDS}, got {click_kinds!r}")
    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")

    state = torch.load(stage1_path, map_location="cpu", weights_only=True)["model"]
    stage1 = midepseg_unet(dim)
    stage1.load_state_dict(state)
    stage1.eval()
    net = refinement_from_stage1(state, dim)
    if resume:
        net.load_state_dict(resumed["model"])
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    # ``model`` takes the gradient steps (all-reducing under DDP); ``net`` is the network itself.
    model = torch.nn.parallel.DistributedDataParallel(net) if launch else net
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    val_crops = [draw_crop(o, None, size) for o in val_objects]
    curves = {"step": [], "loss": [], "val": []}
    best = -1.0
    start = time.perf_counter()
    step, losses = 0, []

    def keep_if_better() -> float:
        """Validate (recorded in ``curves``); save the weights when they beat ``best``."""
        score = _record_validation(net, stage1, val_crops, click_kinds, step, losses, curves, out_path, start)
        if score > best:
            save_atomic({"model": net.state_dict(), "grid": list(size)}, out_path)
        return score

    if validate_start and rank == 0:
        best = _record_validation(net, stage1, val_crops, click_kinds, step, losses, curves, out_path, start)
    halved = False
    while (elapsed := _agreed_elapsed(start, launch)) < minutes * 60:
        if not halved and elapsed > 0.7 * minutes * 60:
            for group in optimizer.param_groups:
                group["lr"] = lr / 2
            halved = True
        crops = [draw_crop(objects[rng.randint(len(objects))], rng, size) for _ in range(batch_size)]
        kinds = ["both" if click_kinds == "both" else SESSION_KINDS[1 if rng.rand() < 0.5 else 2] for _ in crops]
        sessions = [ClickSession(c, m, k) for c, m, k in zip(crops, _stage1_masks(stage1, crops), kinds)]
        rounds = rng.randint(max_rounds + 1)
        for r in range(rounds + 1):
            for s in sessions:
                s.click(rng, jitter)
            x = torch.as_tensor(np.stack([s.network_input() for s in sessions]))
            if r < rounds:
                with torch.no_grad(), autocast():
                    for s, m in zip(sessions, _masks(net(x))):
                        s.mask = m
                continue
            y = torch.as_tensor(np.stack([s.crop["label"] for s in sessions])[:, None].astype(np.float32))
            with autocast():
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        step += 1
        if step % val_every == 0 and rank == 0:
            best = max(best, keep_if_better())
            losses = []
    if step % val_every and rank == 0:  # the steps since the last validation
        keep_if_better()
    curves["steps"] = step
    curves["weights_sha256"] = weights_digest(net)
    logger.info("rank %d: %d steps, final weights sha256 %s", rank, step, curves["weights_sha256"])
    return curves


def _record_validation(net: torch.nn.Module, stage1: torch.nn.Module, val_crops: list[dict], click_kinds: str,
                       step: int, losses: list[float], curves: dict, out_path: str, start: float) -> float:
    """Validate, append to ``curves`` (written beside ``out_path``) and log; returns the mean
    Dice after :data:`VAL_CLICKS` clicks."""
    val = validate(net, stage1, val_crops, click_kinds)
    loss = float(np.mean(losses)) if losses else None
    curves["step"].append(step)
    curves["loss"].append(loss)
    curves["val"].append(val)
    logger.info("step %d (%.0f s) loss %s val Dice %s", step, time.perf_counter() - start,
                "-" if loss is None else f"{loss:.4f}", " ".join(f"{k}:{v:.4f}" for k, v in val.items()))
    curves_path = Path(out_path).with_suffix(".curves.json")
    curves_path.parent.mkdir(parents=True, exist_ok=True)
    curves_path.write_text(json.dumps(curves, indent=1))
    return float(np.mean([val[k] for k in VAL_CLICKS]))


def _agreed_elapsed(start: float, launch: Launch | None) -> float:
    """Seconds since ``start``; under DDP the longest over the ranks, so that all of them
    halve the learning rate and stop at the same step."""
    elapsed = time.perf_counter() - start
    if launch is None:
        return elapsed
    value = torch.tensor([elapsed], dtype=torch.float64)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, help="stage-1 weights (default: the shipped midepseg_<dim>d.pt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=50.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-rounds", type=int, default=5)
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--subject-pattern", default=SUBJECT_PATTERN,
                        help="regular expression whose first group names an image's subject: a subject's images "
                             "(and make_training_mix.py's copies of them) stay on one side of the validation split")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", type=Path, help="continue from these refinement weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=int, nargs="+", help="network grid (default: the --resume file's, else the stage-1 grid)")
    parser.add_argument("--precision", choices=TRAIN_PRECISIONS, default="float32")
    parser.add_argument("--click-kinds", choices=CLICK_KINDS, default="both",
                        help="one: each crop's clicks of one kind (the states proposed with contest nearest)")
    parser.add_argument("--rank-report", type=Path, default=None,
                        help="folder for rank<N>.json: this process's step count and final weights digest")
    args = parser.parse_args(argv)
    launch = launch_from_env()
    rank = launch.rank if launch else 0
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(message)s")
    torch.set_num_threads(args.threads)
    if launch is not None:
        # This trainer computes on the CPU: its processes talk over gloo, GPUs or not.
        torch.distributed.init_process_group(backend="gloo", init_method="env://",
                                             world_size=launch.world_size, rank=launch.rank)
    stage1 = args.stage1 or Path(__file__).resolve().parents[2] / "apps" / "midepseg" / "model" / f"midepseg_{args.dim}d.pt"
    datalist = [{"image": str(p), "label": str(args.labels / p.name)} for p in sorted(args.images.iterdir())
                if (args.labels / p.name).exists()]
    objects, val_objects = split_objects(datalist, args.dim, args.val_fraction, args.subject_pattern)
    logger.info("%d training and %d validation objects", len(objects), len(val_objects))
    try:
        curves = train(objects, val_objects, args.dim, str(stage1), str(args.out), args.minutes, args.batch_size,
                       args.lr, args.max_rounds, args.jitter, args.val_every, args.seed,
                       str(args.resume) if args.resume else None, args.grid, args.precision, launch, args.click_kinds)
    finally:
        if launch is not None:
            torch.distributed.destroy_process_group()
    if args.rank_report:
        args.rank_report.mkdir(parents=True, exist_ok=True)
        report = {"rank": rank, "world_size": launch.world_size if launch else 1, "steps": curves["steps"],
                  "weights_sha256": curves["weights_sha256"]}
        (args.rank_report / f"rank{rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
