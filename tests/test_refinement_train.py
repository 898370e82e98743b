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
