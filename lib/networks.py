"""The MIDeepSeg segmentation networks (paper section 2.3), configured from MONAI.

Classic 2D/3D U-Nets (two 3x3(x3) convolutions per level, max-pool down, transposed-conv
up), with instance instead of batch normalisation and the channel counts divided by four:
2D U-Net 64..1024 -> 16..256, 3D U-Net 32..512 -> 8..128. Input: 2 channels (cropped image,
EGD cue); output: 2-class logits (softmax gives background/foreground probability).
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from monai.networks.nets import BasicUNet

IN_CHANNELS = 2
OUT_CHANNELS = 2
FEATURES = {
    2: (16, 32, 64, 128, 256, 16),
    3: (8, 16, 32, 64, 128, 8),
}
# Network input grid per dimension (paper: 64x64 in 2D, 64x96x96 in 3D; ours is (H, W, D)).
DEFAULT_SPATIAL_SIZE = {2: (64, 64), 3: (96, 96, 64)}


def midepseg_unet(spatial_dims: int, in_channels: int = IN_CHANNELS) -> BasicUNet:
    """The 2D or 3D MIDeepSeg U-Net (``in_channels``: 2 for stage 1,
    ``REFINEMENT_IN_CHANNELS`` for the learned refinement)."""
    if spatial_dims not in FEATURES:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=OUT_CHANNELS,
        features=FEATURES[spatial_dims],
        norm=("instance", {"affine": True}),
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        upsample="deconv",
    )


def load_unet(path: str, spatial_dims: int, in_channels: int = IN_CHANNELS) -> tuple[BasicUNet, tuple[int, ...] | None]:
    """A :func:`midepseg_unet` with the weights of a checkpoint the trainers write
    (``{"model": state_dict, "grid": [...]}``) and the grid stored with them (``None`` when
    the file holds none)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = midepseg_unet(spatial_dims, in_channels)
    net.load_state_dict(checkpoint["model"])
    grid = checkpoint.get("grid")
    return net, None if grid is None else tuple(int(n) for n in grid)


PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16/AMX);
    elsewhere bfloat16 is emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The compute dtype of an inference forward pass.

    ``precision``: ``"float32"``; ``"bfloat16"`` (CPU autocast); or ``"auto"``, which is
    bfloat16 on a CPU that has it natively and float32 otherwise (on this project's 2-core
    AVX512-BF16 CPU the 3D U-Net on 96x96x64 took 0.26 s in bfloat16 against 0.5-0.8 s in
    float32, logits within 0.05; ``scripts/benchmark_core.py``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if torch.device(device).type != "cpu" or precision == "float32":
        return torch.float32
    if precision == "bfloat16" or native_bfloat16():
        return torch.bfloat16
    return torch.float32


def predict_probability(network: torch.nn.Module, image: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Softmax class probabilities ``(B, 2, *spatial)`` float32 of a network input
    ``(B, 2, *spatial)``, computed in ``dtype``.

    In 3D the network (in place, once) and the input are switched to channels-last, oneDNN's
    fast path on a CPU (0.43 s instead of 0.69 s in float32 here). In bfloat16 the whole
    forward pass runs on a bfloat16 copy of the network (:func:`compute_copy`; the network
    itself keeps its float32 weights), input cast to bfloat16: autocast would instead convert
    every activation to float32 around each normalisation and back, which took half the
    time of a 3D stage-1 pass here (96x96x64: 0.15 s against 0.33 s with autocast; 2D
    refinement batch of 9: 0.024 s against 0.034 s).
    """
    if image.ndim == 5:
        network.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    if dtype != torch.float32:
        network, image = compute_copy(network, dtype), image.to(dtype)
    with torch.no_grad():
        logits = network(image)
    return torch.softmax(logits.float(), dim=1)


_COMPUTE_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def compute_copy(network: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``network`` with its parameters and buffers in ``dtype`` (same device and
    memory format), made once per network and dtype and kept while the network lives; made
    again when the network's parameters or buffers were replaced or changed in place since
    (``load_state_dict`` and optimiser steps bump a tensor's version counter)."""
    copies = _COMPUTE_COPIES.setdefault(network, {})
    version = tuple((id(t), t._version) for t in itertools.chain(network.parameters(), network.buffers()))
    held = copies.get(dtype)
    if held is None or held[0] != version:
        memory_format = torch.channels_last_3d if _is_channels_last_3d(network) else torch.preserve_format
        held = (version, copy.deepcopy(network).to(dtype=dtype, memory_format=memory_format).eval())
        copies[dtype] = held
    return held[1]


def _is_channels_last_3d(network: torch.nn.Module) -> bool:
    weight = next((p for p in network.parameters() if p.ndim == 5), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last_3d)


# The learned refinement (issue 10 (c)): the stage-1 U-Net re-run on the same crop with the
# clicks as extra channels: image, margin-point EGD, foreground-click EGD, background-click
# EGD, previous mask.
REFINEMENT_IN_CHANNELS = 5


def refinement_from_stage1(stage1_state: dict, spatial_dims: int) -> BasicUNet:
    """A refinement U-Net initialised from stage-1 weights: every layer copied, the first
    convolution's weights for the three new channels (click EGDs, previous mask) set to
    zero, so that before training it answers exactly what stage 1 answers."""
    net = midepseg_unet(spatial_dims, REFINEMENT_IN_CHANNELS)
    state = net.state_dict()
    for name, value in stage1_state.items():
        if name not in state:
            raise ValueError(f"refinement_from_stage1: unexpected stage-1 parameter {name}")
        if state[name].shape == value.shape:
            state[name] = value.clone()
        else:  # the first convolution: (out, 2, k..) -> (out, 5, k..)
            widened = torch.zeros_like(state[name])
            widened[:, : value.shape[1]] = value
            state[name] = widened
    net.load_state_dict(state)
    return net
