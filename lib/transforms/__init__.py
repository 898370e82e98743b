"""MIDeepSeg steps as MONAI dictionary transforms, each in a module named after the step.

* ``margin_points``: simulated interior margin points (paper 2.1)
* ``crop``: relaxed bounding box, crop + resize, and the inverse
* ``egd``: exponentialized geodesic distance (Eq. 1-2)
* ``cues``: the cue channel of the network input (EGD, and the encodings it is compared with)
* ``fusion``: information fusion of CNN output and clicks (Eq. 3-7)
* ``graph_cut``: graph cut refinement (Eq. 8-11)
* ``robot_user``: simulated corrective clicks for evaluation
"""

from .crop import CropByMarginPointsd, RestoreFromCropd
from .cues import AddCueMapd
from .fusion import InformationFusiond
from .graph_cut import GraphCutd
from .margin_points import ExtremeMarginPointsd, SimulateMarginPointsd
from .robot_user import AddCorrectiveClickd

__all__ = [
    "AddCorrectiveClickd",
    "AddCueMapd",
    "CropByMarginPointsd",
    "ExtremeMarginPointsd",
    "GraphCutd",
    "InformationFusiond",
    "RestoreFromCropd",
    "SimulateMarginPointsd",
]
