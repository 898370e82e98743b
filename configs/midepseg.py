"""Task configs: the 2D and 3D MIDeepSeg models (infer + train) of the app."""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.config import TaskConfig
from monailabel.utils.others.generic import strtobool

from lib.infers.budget import DEFAULT_BUDGET_S
from lib.infers.midepseg_infer import (DEFAULT_REFINEMENT, REFINEMENTS, MIDeepSegInfer, RefinementOptions,
                                      refinement_weights_path)
from lib.networks import DEFAULT_SPATIAL_SIZE, midepseg_unet
from lib.trainers.midepseg_train import MIDeepSegTrain
from lib.trainers.refinement_task import MIDeepSegRefinementTrain

logger = logging.getLogger(__name__)


def refinement_options(conf: dict) -> dict:
    """The :class:`RefinementOptions` fields given as ``--conf`` strings (``monotone true``,
    ``spatial_weight 2``), typed; the rest of the preset stays."""
    out = {}
    for name, field in RefinementOptions.__dataclass_fields__.items():
        if name not in conf:
            continue
        value = conf[name]
        if field.type in (bool, "bool"):
            out[name] = strtobool(str(value))
        elif field.type in (float, "float"):
            out[name] = float(value)
        else:
            out[name] = str(value)
    return out


def ensemble_names(text: str) -> list[str]:
    """The weights files of a ``stage1_ensemble`` setting (comma-separated; ``none``: none)."""
    return [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]


class MIDeepSegConfig(TaskConfig):
    """One MIDeepSeg model: weights ``<model_dir>/<name>.pt``, a deepgrow infer task, a
    Dice-loss trainer that publishes back to the same file and, when the model's refinement
    runs a network, that network's trainer (``<name>_refine.pt``)."""

    dimension = 2
    margin_points = 4
    train_epochs = 20
    lr = 1e-4
    # Per refinement preset, options set for this dimension (``--conf`` overrides them).
    refinement_defaults: dict[str, dict] = {}
    # Further stage-1 weights averaged with this model's (``--conf stage1_ensemble``).
    stage1_ensemble = "none"

    def init(self, name: str, model_dir: str, conf: dict, planner, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = os.path.join(model_dir, f"{name}.pt")
        if not os.path.exists(self.path):
            logger.warning("%s: no weights at %s; the network is untrained until /train/%s runs", name, self.path, name)

    def ensemble_paths(self) -> list[str]:
        """The further stage-1 weights averaged with this model's (``--conf stage1_ensemble``:
        comma-separated files, relative to the model folder; ``none``: this model alone)."""
        folder = os.path.dirname(self.path)
        if "stage1_ensemble" in self.conf:  # asked for: a missing file stops the task at start-up
            return [os.path.join(folder, n) for n in ensemble_names(str(self.conf["stage1_ensemble"]))]
        paths = [os.path.join(folder, n) for n in ensemble_names(self.stage1_ensemble)]
        for path in (p for p in paths if not os.path.exists(p)):
            logger.warning("%s: no stage-1 ensemble member at %s; this model alone answers", self.name, path)
        return [p for p in paths if os.path.exists(p)]

    def refinement_model_path(self) -> str | None:
        """The learned refinement's weights asked for with ``--conf refinement_model``: a path as
        given (absolute, or relative to the working folder) or relative to the model folder;
        ``None`` when not asked for (the task then uses ``<model>_refine.pt``). A file asked for
        that is in neither place stops the task at start-up: a mistyped name must not leave the
        refinement answering with the stage-1 network's fallback."""
        name = self.conf.get("refinement_model")
        if not name:
            return None
        candidates = [str(name), os.path.join(os.path.dirname(self.path), str(name))]
        found = next((p for p in candidates if os.path.isfile(p)), None)
        if found is None:
            raise ValueError(f"{self.name}: --conf refinement_model {name!r}: no such file (looked for "
                             + " and ".join(repr(p) for p in candidates) + ")")
        return found

    def infer(self) -> MIDeepSegInfer:
        kind = "2D (also on one slice of a 3D volume)" if self.dimension == 2 else "3D"
        return MIDeepSegInfer(
            path=self.path,
            network=midepseg_unet(self.dimension),
            dimension=self.dimension,
            spatial_size=DEFAULT_SPATIAL_SIZE[self.dimension],
            margin_points=self.margin_points,
            precision=self.conf.get("precision", "auto"),
            cue=self.conf.get("cue", "egd"),
            refinement=self.conf.get("refinement"),
            refinement_options={
                **self.refinement_defaults.get(self.refinement(), {}),
                **refinement_options(self.conf),
            },
            refinement_path=self.refinement_model_path(),
            budget_s=float(self.conf.get("request_budget_s", DEFAULT_BUDGET_S)),
            stage1_resolution=self.conf.get("stage1_resolution"),
            ensemble_paths=self.ensemble_paths(),
            shared_cue=strtobool(str(self.conf.get("shared_cue", "false"))),
            stage1_sigma=float(self.conf["stage1_sigma"]) if "stage1_sigma" in self.conf else None,
            work_voxels=int(self.conf["work_voxels"]) if "work_voxels" in self.conf else None,
            torch_threads=int(self.conf["torch_threads"]) if "torch_threads" in self.conf else None,
            description=(
                f"MIDeepSeg {kind}: click {self.margin_points} interior margin points just inside the object's "
                "boundary (foreground), then foreground/background clicks to refine"
            ),
        )

    def refinement(self) -> str:
        """The refinement preset the infer task runs (``--conf refinement``, else the default)."""
        return str(self.conf.get("refinement") or DEFAULT_REFINEMENT[self.dimension])

    def refinement_trainer(self) -> MIDeepSegRefinementTrain | None:
        """The learned refinement's trainer, against this model's stage-1 weights, publishing
        where the infer task reads the refinement weights; ``None`` when the refinement runs no
        network (the 3D default, the IF-GC presets)."""
        preset = REFINEMENTS.get(self.refinement())
        if preset is None or preset.proposal != "learned":
            return None
        return MIDeepSegRefinementTrain(
            dimension=self.dimension,
            stage1_path=self.path,
            publish_path=self.refinement_model_path() or refinement_weights_path(self.path),
            work_dir=os.path.join(self.model_dir, f"train_{self.name}_refine"),
        )

    def trainer(self) -> MIDeepSegTrain:
        return MIDeepSegTrain(
            model_dir=os.path.join(self.model_dir, f"train_{self.name}"),
            network=midepseg_unet(self.dimension),
            spatial_dims=self.dimension,
            spatial_size=DEFAULT_SPATIAL_SIZE[self.dimension],
            publish_path=self.path,
            lr=self.lr,
            cue=self.conf.get("cue", "egd"),
            config={"max_epochs": self.train_epochs},
        )


class MIDeepSeg2DConfig(MIDeepSegConfig):
    dimension = 2
    margin_points = 4
    # Session 18, on the 2D selection set (26 objects; docs/experiments.md, "Depth limit in 2D"): a click's
    # changes kept only where connected to it and no deeper (distance to the previous mask's
    # boundary) than its own depth, reach limit 0.5 / 0.75 / 1 / 1.5 / 2 / off: Dice after 10
    # clicks 0.935 / 0.953 / 0.963 / 0.961 / 0.960 / 0.957, worse clicks 0 % in all but off (2.3 %).
    # Session 20, same set and rule: the states with clicks of both kinds decided by the nearer of
    # their two last clicks instead of a network pass each (contest "nearest"; lib/infers/
    # midepseg_infer.py: RefinementOptions.contest): Dice after 10 clicks 0.9623 -> 0.9626, worse
    # clicks 0 -> 1 of 257, a click 0.043 -> 0.031 s in-process (docs/experiments.md, "Contested voxels").
    refinement_defaults = {"learned_ifgc": {"reach_limit": 1.0, "contest": "nearest"}}


class MIDeepSeg3DConfig(MIDeepSegConfig):
    dimension = 3
    margin_points = 6
    lr = 1e-3
    # On 12 3D training objects (scripts/tune_refinement.py --dim 3) spatial weight 0.5 gave
    # the repaired IF-GC's best Dice after 10 clicks (0.664; 1.0: 0.628). Claims of both kinds
    # were chosen on the 3D selection set (Dice after 10 clicks 0.724 -> 0.733, worse clicks
    # 1.7 % -> 0.8 %), then geodesic weight 0.5 there (0.756, 0.8 %; 0.25: 0.775 with 2.5 % of
    # the clicks worse, 0.1: 0.781 with 5.8 %; docs/experiments.md). Then, on the 3D selection set with two
    # CT structures added (14 objects): the stage-1 ensemble with the class-agnostic network and
    # radius limit 3 (Dice after 10 clicks 0.768 -> 0.809, worse clicks 1.4 % -> 0.7 %; the
    # ensemble alone 0.811 with 2.9 %; docs/experiments.md). Then proposals that refine the merged parents
    # (previous "merged": a click no longer gives back what the last click of the other kind
    # changed) on the same 14 objects: 0.809 -> 0.810 after 10 clicks, worse clicks 0.7 % -> 0 %.
    # Session 16, with the 3D graph cut at lamda 20 / sigma 0.03 (lib/infers/midepseg_infer.py:
    # GRAPH_CUT_DEFAULTS): radius limit 3 / 5 / off 0.820 / 0.824 / 0.828 after 10 clicks, no worse
    # click in any; off lets two background clicks in an uploaded leaking spleen take spleen with
    # the leak (Dice 0.9916 -> 0.9865, tests/test_server_e2e.py), radius 5 does not (0.9948), so 5
    # (docs/experiments.md, "Graph-cut contrast in 3D"). Session 20: contest "nearest" (as in 2D) on the 3D
    # selection set, Dice after 10 clicks 0.8240 -> 0.8245, no worse click in either; the
    # proposals of the states with clicks of both kinds, which "previous" chose the parent of,
    # are then no longer made (``--conf contest proposal`` gives the default before).
    # Session 22: a click's hard seed in the graph cut is the ball of 0.9 times its depth, at
    # most 2 work voxels (seed_radius, seed_limit): on the same 14 objects Dice after 10 clicks
    # 0.825 -> 0.833, clicks that change Dice by less than 0.0001 6.4 % -> 1.4 %, one click of
    # 140 worse. Without the limit 0.836, with a limit of 3 voxels 0.835, but both cross the
    # true boundary near deep clicks (docs/experiments.md, "A click seeds a ball"; ``--conf seed_radius 0``
    # gives the default before).
    refinement_defaults = {
        "ifgc_repaired": {"spatial_weight": 0.5, "claims": "all", "geodesic_weight": 0.5, "radius_limit": 5.0,
                          "previous": "merged", "contest": "nearest", "seed_radius": 0.9, "seed_limit": 2.0}
    }
    stage1_ensemble = "midepseg_3d_generic.pt"
