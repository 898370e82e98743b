"""MIDeepSeg steps as MONAI dictionary transforms, each in a module named after the step.

* ``margin_points``: simulated interior margin points (paper 2.1)
* ``crop``: relaxed bounding box, crop + resize, and the inverse
* ``egd``: exponentialized geodesic distance cue (Eq. 1-2)
* ``fusion``: information fusion of CNN output and clicks (Eq. 3-7)
* ``graph_cut``: graph cut refinement (Eq. 8-11)
* ``robot_user``: simulated corrective clicks for evaluation
"""

from .crop import CropByMarginPointsd, RestoreFromCropd
from .egd import AddEGDCued
from .fusion import InformationFusiond
from .graph_cut import GraphCutd
from .margin_points import ExtremeMarginPointsd, SimulateMarginPointsd
from .robot_user import AddCorrectiveClickd

__all__ = [
    "AddCorrectiveClickd",
    "AddEGDCued",
    "CropByMarginPointsd",
    "ExtremeMarginPointsd",
    "GraphCutd",
    "InformationFusiond",
    "RestoreFromCropd",
    "SimulateMarginPointsd",
]
