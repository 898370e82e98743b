"""MONAI Label task configurations of the MIDeepSeg app."""
