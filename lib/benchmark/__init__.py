"""Robot-user benchmark of MIDeepSeg against classic interactive segmentation methods on the
same clicks (GitHub issue 5): :mod:`.methods` (a common ``Method`` interface and its
implementations) and :mod:`.protocol` (margin points, corrective clicks, Dice/ASSD per
interaction, number of clicks to reach a Dice)."""

from .methods import (
    METHOD_KEYS,
    GeodesicMethod,
    GrabCutMethod,
    GraphCutMethod,
    Method,
    MIDeepSegMethod,
    RandomWalkerMethod,
    build_methods,
)
from .protocol import ProtocolResult, number_of_clicks, run_protocol

__all__ = [
    "METHOD_KEYS",
    "GeodesicMethod",
    "GrabCutMethod",
    "GraphCutMethod",
    "Method",
    "MIDeepSegMethod",
    "ProtocolResult",
    "RandomWalkerMethod",
    "build_methods",
    "number_of_clicks",
    "run_protocol",
]
