"""The MIDeepSeg segmentation networks (paper section 2.3), configured from MONAI.

Classic 2D/3D U-Nets (two 3x3(x3) convolutions per level, max-pool down, transposed-conv
up), with instance instead of batch normalisation and the channel counts divided by four:
2D U-Net 64..1024 -> 16..256, 3D U-Net 32..512 -> 8..128. Input: 2 channels (cropped image,
EGD cue); output: 2-class logits (softmax gives background/foreground probability).
"""

from __future__ import annotations

from monai.networks.nets import BasicUNet

IN_CHANNELS = 2
OUT_CHANNELS = 2
FEATURES = {
    2: (16, 32, 64, 128, 256, 16),
    3: (8, 16, 32, 64, 128, 8),
}
# Network input grid per dimension (paper: 64x64 in 2D, 64x96x96 in 3D; ours is (H, W, D)).
DEFAULT_SPATIAL_SIZE = {2: (64, 64), 3: (96, 96, 64)}


def midepseg_unet(spatial_dims: int) -> BasicUNet:
    """The 2D or 3D MIDeepSeg U-Net."""
    if spatial_dims not in FEATURES:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        features=FEATURES[spatial_dims],
        norm=("instance", {"affine": True}),
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        upsample="deconv",
    )
