"""Distributed data-parallel training under ``torchrun`` (issue 12): which process this is,
which backend it talks over, and a digest of a network's weights to compare ranks.

``torchrun --nnodes N --nproc_per_node M -m lib.trainers.train_cli ...`` starts N x M copies
of the same trainer; each reads its place from the environment torchrun sets (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``, ``TORCHELASTIC_RUN_ID``).
Outside torchrun (the server's ``/train``, a plain ``python -m``) :func:`launch_from_env`
returns ``None`` (so does a torchrun job of one process) and training runs as one process (or as MONAI Label's own multi-GPU spawn).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job.

    Attributes:
        rank: global rank, 0 .. ``world_size - 1``; rank 0 alone validates into checkpoints,
            publishes the model, writes curves and shows the progress bar.
        local_rank: rank on this node (selects the GPU: ``cuda:<local_rank>``).
        world_size: number of processes over all nodes.
        run_id: torchrun's job id, the same on every rank (names the run's cache folder).
    """

    rank: int
    local_rank: int
    world_size: int
    run_id: str

    @property
    def backend(self) -> str:
        """NCCL between GPUs, gloo between CPU processes."""
        return "nccl" if torch.cuda.is_available() else "gloo"

    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def launch_from_env(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun launch described by ``environ`` (default ``os.environ``), or ``None``
    when this process was not started by torchrun (a variable is missing) or is its only
    process (``WORLD_SIZE`` 1: nothing to distribute).

    Raises:
        ValueError: when the variables are present but inconsistent (a rank outside the world).
    """
    env = os.environ if environ is None else environ
    if any(name not in env for name in TORCHRUN_VARIABLES):
        return None
    rank, local_rank, world_size = (int(env[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank <= rank:
        raise ValueError(f"torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size} do not fit")
    if world_size == 1:
        return None
    run_id = env.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":  # torchrun --standalone and single-node runs without a rendezvous id
        run_id = f"torchrun_{env['MASTER_PORT']}"
    return Launch(rank=rank, local_rank=local_rank, world_size=world_size, run_id=run_id.replace(os.sep, "_"))


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 over a network's state dict (names, shapes, float32 values), the same for
    identical weights on any device; unwraps ``DistributedDataParallel``."""
    module = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
