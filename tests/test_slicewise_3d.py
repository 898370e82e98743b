"""``scripts/measure_slicewise_3d.py``: the 2D task run slice by slice inside a 3D object answers
on the prompted slices only, along each axis, and segments each slice from its prompt's margin
points rather than copying the prompt."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import APP_MODELS, dice_np, load_script, noisy_image

pytestmark = pytest.mark.skipif(not (APP_MODELS / "midepseg_2d.pt").is_file(), reason="shipped 2D weights missing")


@pytest.fixture(scope="module")
def task_2d():
    from configs.midepseg import MIDeepSeg2DConfig

    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP_MODELS), {}, None)
    return config.infer()


@pytest.mark.parametrize("axis", [0, 2])
def test_slicewise_follows_the_prompted_cross_sections(tmp_path, task_2d, axis):
    # An elongated ellipsoid: its cross-sections differ along every axis.
    shape = (56, 44, 28)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = ((grids[0] - 28) / 20) ** 2 + ((grids[1] - 22) / 14) ** 2 + ((grids[2] - 14) / 9) ** 2 <= 1
    path = tmp_path / "object.nii.gz"
    nib.save(nib.Nifti1Image(noisy_image(truth, seed=1)[0], np.eye(4)), str(path))
    script = load_script("measure_slicewise_3d")

    # Prompts 2 voxels inside every cross-section: the network finds the object's edge from their
    # margin points (a copy of the prompts would score theirs: 0.78 / 0.86 along axis 0 / 2).
    inner = np.stack([ndimage.binary_erosion(np.take(truth, i, axis=axis), iterations=2) for i in range(shape[axis])],
                     axis=axis)
    full = script.slicewise(task_2d, str(path), inner, np.ones(3), axis, min_pixels=9)
    assert dice_np(full, truth) > 0.95 > dice_np(inner, truth) + 0.08

    # Prompts on the first half of the object's slices only: the answer stays on those slices.
    covered = np.nonzero(truth.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    half = covered[len(covered) // 2]
    prompts = truth.copy()
    where = [slice(None)] * 3
    where[axis] = slice(half, None)
    prompts[tuple(where)] = False
    part = script.slicewise(task_2d, str(path), prompts, np.ones(3), axis, min_pixels=9)
    per_slice = part.sum(axis=tuple(a for a in range(3) if a != axis))
    assert per_slice[half:].sum() == 0
    assert (per_slice[covered[0] + 1: half] > 0).all()
    assert dice_np(part, prompts) > 0.85
