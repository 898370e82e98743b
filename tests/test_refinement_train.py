"""The learned refinement's click training runs, publishes loadable weights, and starts
from the stage-1 network's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.networks import REFINEMENT_IN_CHANNELS, midepseg_unet, refinement_from_stage1
from lib.trainers.refinement_train import TrainObject, train
from tests.conftest import ellipsoid_mask, noisy_image


@pytest.mark.parametrize("click_kinds", ["both", "one"])
def test_refinement_starts_as_stage1_and_training_publishes_weights(tmp_path, click_kinds):
    torch.manual_seed(0)
    stage1 = midepseg_unet(2).eval()
    refine = refinement_from_stage1(stage1.state_dict(), 2).eval()
    x = torch.randn(2, REFINEMENT_IN_CHANNELS, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(refine(x), stage1(x[:, :2]))  # click channels start at zero weight

    stage1_path = tmp_path / "stage1.pt"
    torch.save({"model": stage1.state_dict()}, stage1_path)
    objects = []
    for k in range(4):
        mask = ellipsoid_mask((70, 70), (35 + k, 33), 14 + 2 * k)
        objects.append(TrainObject(f"disk{k}", noisy_image(mask, seed=k)[0], mask, np.ones(2)))
    out = tmp_path / "refine.pt"
    curves = train(objects[:3], objects[3:], 2, str(stage1_path), str(out), minutes=0.15, batch_size=2, lr=1e-3,
                   max_rounds=1, jitter=0.3, val_every=2, click_kinds=click_kinds)
    assert out.is_file() and curves["step"], "a validated checkpoint must be published"
    net = midepseg_unet(2, REFINEMENT_IN_CHANNELS)
    net.load_state_dict(torch.load(out, map_location="cpu", weights_only=True)["model"])
    first = next(p for name, p in net.state_dict().items() if name.endswith("conv.weight"))
    assert first.shape[1] == REFINEMENT_IN_CHANNELS and float(first[:, 2:].abs().sum()) > 0, "the click channels learned nothing"
    assert set(curves["val"][0]) == {0, 1, 3, 5}


def test_a_coarser_refinement_grid_trains_in_bfloat16_and_the_infer_task_uses_it(tmp_path):
    """``--grid`` and ``--precision bfloat16`` (the 3D recipe's options, here on 2D disks):
    the checkpoint records its grid, and the infer task runs the network on that grid,
    resampling the stage-1 crop to it."""
    from pathlib import Path

    from lib.benchmark.methods import MIDeepSegMethod
    from lib.benchmark.protocol import run_protocol

    app_model = Path(__file__).resolve().parents[1] / "apps" / "midepseg" / "model"
    objects = []
    for k in range(3):
        mask = ellipsoid_mask((70, 70), (35 + k, 33), 14 + 2 * k)
        objects.append(TrainObject(f"disk{k}", noisy_image(mask, seed=k)[0], mask, np.ones(2)))
    out = tmp_path / "refine.pt"
    train(objects[:2], objects[2:], 2, str(app_model / "midepseg_2d.pt"), str(out), minutes=0.1, batch_size=2, lr=1e-3,
          max_rounds=1, jitter=0.3, val_every=1, grid=(48, 40), precision="bfloat16")
    assert torch.load(out, map_location="cpu", weights_only=True)["grid"] == [48, 40]
    mask = ellipsoid_mask((90, 90), (45, 44), 20) | ellipsoid_mask((90, 90), (62, 60), 9)
    image = noisy_image(mask, seed=7, noise=0.3)[0]  # hard enough that the robot clicks
    method = MIDeepSegMethod(2, "learned", conf={"refinement_model": str(out)})
    try:
        result = run_protocol(method, image, mask, None, 2, keep_masks=(0, 1, 2))
        assert method.task._learned.grid == (48, 40)
    finally:
        method.close()
    assert result.masks[2].shape == mask.shape and len(result.clicks) >= 1


def test_a_one_kind_session_clicks_only_the_errors_of_its_kind():
    """``click_kinds="one"``: a crop whose mask both misses object and leaks gets clicks of
    its own kind only, placed in the largest error region of that kind (the robot with both
    kinds clicks the larger leak)."""
    from lib.trainers.refinement_train import ClickSession

    label = np.zeros((32, 32), bool)
    label[8:24, 8:24] = True
    mask = label.copy()
    mask[8:12, 8:24] = False  # a missed strip of 64 pixels
    mask[24:32, 0:32] = True  # a leak of 256 pixels
    crop = {"image": np.zeros((32, 32), np.float32), "cue": np.zeros((32, 32), np.float32), "label": label}
    both, fg_only, bg_only = (ClickSession(crop, mask, kind) for kind in ("both", "foreground", "background"))
    for session in (both, fg_only, bg_only):
        for _ in range(3):
            session.click(None, 0.0)
    assert len(both.bg) and not len(fg_only.bg) and not len(bg_only.fg)
    assert len(fg_only.fg) == 3 and len(bg_only.bg) == 3
    assert all(label[tuple(p)] and not mask[tuple(p)] for p in fg_only.fg)
    assert all(mask[tuple(p)] and not label[tuple(p)] for p in bg_only.bg)


class _Labelled:
    """The part of a MONAI Label datastore the train tasks read: the labelled items."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def datalist(self) -> list[dict]:
        return self.items


def _disk_datastore(tmp_path, dimension: int = 2) -> "_Labelled":
    """Three noisy disks (2D) or balls (3D) with their labels, as NIfTI files of a datastore."""
    import nibabel as nib

    items = []
    for k in range(3):
        mask = (ellipsoid_mask((70, 70), (35 + k, 33), 14 + 2 * k) if dimension == 2
                else ellipsoid_mask((40, 40, 30), (20 + k, 19, 15), 8 + k))
        item = {}
        for kind, arr in (("image", noisy_image(mask, seed=k)[0]), ("label", mask.astype(np.uint8))):
            path = tmp_path / kind / f"case{k}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), np.eye(4)), str(path))
            item[kind] = str(path)
        items.append(item)
    return _Labelled(items)


def _refinement_task(tmp_path, dimension: int = 2):
    """A refinement train task over a seeded stage-1 file, publishing to ``model/m_refine.pt``."""
    from lib.trainers.refinement_task import MIDeepSegRefinementTrain

    torch.manual_seed(0)
    stage1 = midepseg_unet(dimension)
    stage1_path, publish = tmp_path / "model" / "m.pt", tmp_path / "model" / "m_refine.pt"
    stage1_path.parent.mkdir()
    torch.save({"model": stage1.state_dict()}, stage1_path)
    task = MIDeepSegRefinementTrain(dimension, str(stage1_path), str(publish), str(tmp_path / "work"))
    return task, stage1, publish


def test_the_refinement_train_task_trains_on_the_datastore_labels_and_publishes(tmp_path):
    """``/train/<model>_refine``: trains against the model's stage-1 file on the datastore's
    labels and publishes atomically; bad requests and an empty datastore are errors that name
    the problem, and nothing is published then."""
    from lib.trainers.refinement_task import MIDeepSegRefinementTrain

    store = _disk_datastore(tmp_path)
    task, _, publish = _refinement_task(tmp_path)
    for request, labelled, message in (({"minutes": "soon"}, store, "^minutes: expected"), ({"minutes": 0}, store, "^minutes must"),
                                       ({"val_split": 1.5}, store, "^val_split must"), ({"max_rounds": -1}, store, "^max_rounds must"),
                                       ({"jitter": 2}, store, "^jitter must"), ({"precision": "fp8"}, store, "^precision must"),
                                       ({}, _Labelled([]), "no labelled image")):
        with pytest.raises(ValueError, match=message):
            task(request, labelled)
    with pytest.raises(ValueError, match="stage-1"):
        MIDeepSegRefinementTrain(2, str(tmp_path / "none.pt"), str(publish), str(tmp_path / "work"))({}, store)
    assert not publish.exists()

    result = task({"minutes": 0.05, "batch_size": 2, "max_rounds": 1, "val_every": 1000, "lr": 1e-3, "val_split": 0.3},
                  store)
    assert result["steps"] >= 1 and result["training_objects"] == 2 and result["validation_objects"] == 1
    assert result["published"] == str(publish) and result["start_validation_dice"] is None
    published = torch.load(publish, weights_only=True)
    assert published["grid"] == [64, 64]
    midepseg_unet(2, REFINEMENT_IN_CHANNELS).load_state_dict(published["model"])
    assert not list(publish.parent.glob("*.tmp")) and not list(publish.parent.glob(".*.tmp"))
    assert set(task.stats()["val"][-1]) == {"0", "1", "3", "5"}  # the run's curves, as JSON


def test_the_refinement_train_task_trains_a_3d_refinement(tmp_path):
    """3D (a model run with ``--conf refinement learned``): with no refinement published, a run
    starts from the stage-1 weights, on the stage-1 grid, and publishes a loadable network."""
    task, _, publish = _refinement_task(tmp_path, dimension=3)
    result = task({"minutes": 0.02, "batch_size": 1, "max_rounds": 1}, _disk_datastore(tmp_path, dimension=3))
    assert result["published"] == str(publish) and result["steps"] >= 1
    checkpoint = torch.load(publish, weights_only=True)
    assert checkpoint["grid"] == [96, 96, 64]
    midepseg_unet(3, REFINEMENT_IN_CHANNELS).load_state_dict(checkpoint["model"])


@pytest.mark.parametrize("after, published", [(0.55, False), (0.65, True)])
def test_the_refinement_task_publishes_only_what_beats_the_published_weights(tmp_path, monkeypatch, after, published):
    """A run continues from the published refinement, on its grid, and replaces it only when
    its validation beats that of the published weights against the current stage 1 (here the
    validation is scripted: 0.6 for the start, then ``after``)."""
    import lib.trainers.refinement_train as refinement_train

    scores = iter([0.6, after])
    monkeypatch.setattr(refinement_train, "validate", lambda *args, **kwargs: dict.fromkeys((0, 1, 3, 5), next(scores)))
    task, stage1, publish = _refinement_task(tmp_path)
    torch.save({"model": refinement_from_stage1(stage1.state_dict(), 2).state_dict(), "grid": [48, 48]}, publish)
    before = torch.load(publish, weights_only=True)["model"]
    result = task({"minutes": 0.03, "batch_size": 2, "max_rounds": 1, "lr": 1e-2}, _disk_datastore(tmp_path))
    assert result["start_validation_dice"] == pytest.approx(0.6) and result["steps"] >= 1
    now = torch.load(publish, weights_only=True)
    changed = any(not torch.equal(before[k], v) for k, v in now["model"].items())
    assert changed == published and (result["published"] is not None) == published
    assert now["grid"] == [48, 48]


@pytest.mark.parametrize("dimension, conf, offered", [(2, {}, True), (3, {}, False), (3, {"refinement": "learned"}, True),
                                                      (2, {"refinement": "ifgc_repaired"}, False)])
def test_a_model_offers_a_refinement_trainer_when_its_refinement_runs_a_network(tmp_path, dimension, conf, offered):
    from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig

    config = (MIDeepSeg2DConfig if dimension == 2 else MIDeepSeg3DConfig)()
    name = f"midepseg_{dimension}d"
    config.init(name, str(tmp_path), conf, None)
    trainer = config.refinement_trainer()
    assert (trainer is not None) == offered
    if offered:
        assert trainer.stage1_path == str(tmp_path / f"{name}.pt")
        assert trainer.publish_path == str(tmp_path / f"{name}_refine.pt")
