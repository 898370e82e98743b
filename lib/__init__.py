"""MIDeepSeg for MONAI Label: transforms, networks, infer and train tasks."""
