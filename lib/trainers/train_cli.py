"""Train a MIDeepSeg network from the command line on a folder of images + labels, with
the same :class:`MIDeepSegTrain` task the server runs on ``POST /train/{model}``.

    python -m lib.trainers.train_cli --dim 2 --images DIR --labels DIR \\
        --output apps/midepseg/model/midepseg_2d.pt --epochs 60

On several processes or machines, the same command under torchrun trains one
DistributedDataParallel model (gloo on CPUs, NCCL on GPUs; rank 0 publishes ``--output``)::

    torchrun --nnodes 1 --nproc_per_node 2 -m lib.trainers.train_cli --dim 2 ...

Labels must have the image's file name; any label value > 0 is the object. The folder pair
is presented to MONAI Label's ``LocalDatastore`` through symbolic links in ``--work-dir``,
so the source folders stay read-only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from monailabel.datastore.local import LocalDatastore

from lib.networks import DEFAULT_SPATIAL_SIZE, midepseg_unet
from lib.trainers.distributed import launch_from_env
from lib.trainers.midepseg_train import TRAIN_PRECISIONS, MIDeepSegTrain
from lib.transforms.cues import CUE_ENCODINGS

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".nii.gz", ".nii", ".nrrd")


def link_datastore(images: Path, labels: Path, root: Path) -> LocalDatastore:
    """A LocalDatastore in ``root`` whose images and final labels link to the given folders."""
    final = root / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    count = 0
    for image in sorted(images.iterdir()):
        if not image.name.endswith(IMAGE_SUFFIXES):
            continue
        label = labels / image.name
        if not label.exists():
            logger.warning("no label for %s, skipped", image.name)
            continue
        for src, dst in ((image, root / image.name), (label, final / image.name)):
            if not dst.exists():
                try:
                    dst.symlink_to(src.resolve())
                except FileExistsError:  # another rank of a torchrun job linked it first
                    pass
        count += 1
    if count == 0:
        raise ValueError(f"no image in {images} has a label of the same name in {labels}")
    extensions = tuple(f"*{s}" for s in IMAGE_SUFFIXES)
    return LocalDatastore(str(root), extensions=extensions, auto_reload=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="published model file")
    parser.add_argument("--work-dir", type=Path, default=None, help="runs, checkpoints, curves (default: beside --output)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--subject-pattern", default=r"^(.*?)(?:\.nii\.gz|\.nii|\.nrrd|\.png|\.jpg)?$")
    parser.add_argument("--spatial-size", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--from-scratch", action="store_true", help="ignore an existing published model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=TRAIN_PRECISIONS, default="float32",
                        help="bfloat16: the forward passes under CPU autocast (for CPUs with native bfloat16)")
    parser.add_argument("--cue", choices=CUE_ENCODINGS, default="egd", help="cue encoding of the margin points (ablation)")
    parser.add_argument("--rank-report", type=Path, default=None,
                        help="folder for rank<N>.json: this process's stats, final weights digest and data per epoch")
    args = parser.parse_args(argv)

    launch = launch_from_env()
    rank = launch.rank if launch else 0
    # Under torchrun only rank 0 logs progress; the others report warnings and errors.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s] rank {rank} %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work_dir or args.output.parent / f"train_{args.output.stem}"
    work.mkdir(parents=True, exist_ok=True)
    datastore = link_datastore(args.images, args.labels, work / "datastore")
    spatial_size = tuple(args.spatial_size) if args.spatial_size else DEFAULT_SPATIAL_SIZE[args.dim]
    task = MIDeepSegTrain(
        model_dir=str(work / "runs"),
        network=midepseg_unet(args.dim),
        spatial_dims=args.dim,
        spatial_size=spatial_size,
        publish_path=str(args.output),
        lr=args.lr,
        subject_pattern=args.subject_pattern,
        cue=args.cue,
        precision=args.precision,
    )
    request = {
        "name": "cli",
        "max_epochs": args.epochs,
        "val_split": args.val_fraction,
        "pretrained": not args.from_scratch,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seed": args.seed,
    }
    if args.batch_size:
        request["train_batch_size"] = args.batch_size
    start = time.time()
    stats = task(request, datastore)
    stats["wall_time_s"] = round(time.time() - start, 1)
    logger.info("training done in %.0f s: %s", stats["wall_time_s"], json.dumps(stats, default=str)[:2000])
    if args.rank_report:
        args.rank_report.mkdir(parents=True, exist_ok=True)
        report = {"rank": rank, "world_size": launch.world_size if launch else 1, "stats": stats,
                  "weights_sha256": task.final_weights_digest, "epoch_shards": task.epoch_shards}
        (args.rank_report / f"rank{rank}.json").write_text(json.dumps(report, indent=1, default=str))
    return stats


if __name__ == "__main__":
    main()
