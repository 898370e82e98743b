"""The 2D model on one slice of a volume works in the slice's own in-plane spacing, for every
slice axis the clients can send (issue 13): segmenting a slice of an anisotropic volume gives
exactly what the same slice gives as a 2D image with that spacing, and not what it gives when
the spacing is dropped."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from configs.midepseg import MIDeepSeg2DConfig
from lib.transforms.clicks import SelectSliced
from lib.transforms.margin_points import extreme_margin_points
from monai.data import MetaTensor
from tests.conftest import APP_MODELS, ellipsoid_mask, noisy_image, stage1_mask

SPACING = (0.7, 1.1, 3.0)  # mm along the volume's axes 0, 1, 2


@pytest.fixture(scope="module")
def task_2d(tmp_path_factory):
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(APP_MODELS), {}, None)
    return config.infer()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A ball of radius 13 mm in noise, stored with anisotropic spacing (an ellipsoid in voxels)."""
    shape = (48, 40, 20)
    mask = ellipsoid_mask(shape, (22, 19, 10), 13.0, SPACING)
    image = noisy_image(mask, seed=3, noise=0.25)[0]
    path = tmp_path_factory.mktemp("vol") / "volume.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.diag([*SPACING, 1.0])), path)
    return path, image, mask


def test_select_slice_keeps_the_in_plane_spacing():
    volume = MetaTensor(np.random.RandomState(0).rand(1, 8, 9, 5).astype(np.float32), affine=np.diag([*SPACING, 1.0]))
    for axis in range(3):
        point = [3, 4, 2]
        out = SelectSliced("image")({"image": volume, "foreground": [point], "background": [], "slice_axis": axis})
        assert np.allclose(np.asarray(out["image"].pixdim)[:2], np.delete(SPACING, axis)), axis


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_of_a_volume_equals_the_2d_image_with_its_spacing(task_2d, volume, tmp_path, axis):
    path, image, mask = volume
    k = int(np.argmax(np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).sum(1)))
    plane, ref = np.take(image, k, axis=axis), np.take(mask, k, axis=axis)
    in_plane = np.delete(SPACING, axis)
    points = extreme_margin_points(ref, in_plane)
    with_spacing, without = tmp_path / "plane.nii.gz", tmp_path / "plane_1mm.nii.gz"
    nib.save(nib.Nifti1Image(plane.astype(np.float32), np.diag([*in_plane, 1.0, 1.0])), with_spacing)
    nib.save(nib.Nifti1Image(plane.astype(np.float32), np.eye(4)), without)

    expected = stage1_mask(task_2d, with_spacing, points)
    from_volume = stage1_mask(task_2d, path, np.insert(points, axis, k, axis=1), slice_axis=axis)
    np.testing.assert_array_equal(np.take(from_volume, k, axis=axis), expected)
    assert from_volume.sum() == expected.sum(), "only the clicked slice is labelled"
    # The spacing is what makes them equal: without it the answer differs.
    assert not np.array_equal(stage1_mask(task_2d, without, points), expected)
