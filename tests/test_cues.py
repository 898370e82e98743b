"""The cue channel of the network input: EGD and the encodings of the ablation."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.cues import CUE_ENCODINGS, AddCueMapd, cue_map
from lib.transforms.egd import exponentialized_geodesic_distance


def _step_image(shape=(40, 40)):
    img = np.zeros(shape, np.float32)
    img[:, shape[1] // 2 :] = 1.0  # an edge half-way along axis 1
    return img + 0.01 * np.random.RandomState(0).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("fixture", ["disk_2d", "ball_3d"])
def test_add_cue_map_is_the_egd_by_default(request, fixture):
    image, mask = request.getfixturevalue(fixture)
    centre = np.argwhere(mask).mean(0).round().astype(np.int64)
    pts = np.stack([centre, np.zeros_like(centre)])
    two_channels = np.concatenate([image, -image])  # only the first channel is used
    out = AddCueMapd("image", points_key="pts", cue_key="egd")({"image": two_channels, "pts": pts})
    cue = out["egd"]
    assert cue.shape == (1,) + mask.shape and cue.dtype == np.float32
    np.testing.assert_allclose(cue[0], exponentialized_geodesic_distance(image[0], pts))
    assert np.all(cue[0][tuple(pts.T)] == 1.0)
    assert out["image"] is two_channels  # the image itself is not replaced


@pytest.mark.parametrize("encoding", CUE_ENCODINGS)
def test_every_encoding_is_zero_without_points(encoding):
    image = np.random.RandomState(0).rand(1, 12, 12).astype(np.float32)
    out = AddCueMapd("image", encoding=encoding)({"image": image, "margin_points_crop": np.zeros((0, 2), np.int64)})
    assert out["cue"].shape == (1, 12, 12) and not out["cue"].any()


def test_encodings_at_the_points_and_across_an_edge():
    image, pts = _step_image(), np.array([[20, 5]])
    near, same_side_far, across_edge = (20, 8), (38, 18), (20, 25)
    cues = {enc: cue_map(image, pts, enc) for enc in CUE_ENCODINGS}
    for enc, cue in cues.items():
        assert cue.shape == image.shape and cue.dtype == np.float32, enc
    assert cues["egd"][20, 5] == 1.0 and cues["gaussian"][20, 5] == 1.0
    assert cues["geodesic"][20, 5] == 0.0 and cues["euclidean"][20, 5] == 0.0
    assert cues["geodesic"].max() == pytest.approx(1.0)
    assert not cues["box"].any()
    # The geodesic encodings see the edge: a voxel far away on the clicked side is closer
    # than one just across the edge; the spatial ones only see the distance.
    assert cues["egd"][same_side_far] > cues["egd"][across_edge]
    assert cues["geodesic"][same_side_far] < cues["geodesic"][across_edge]
    assert cues["euclidean"][same_side_far] > cues["euclidean"][across_edge] > cues["euclidean"][near]
    assert cues["gaussian"][near] > cues["gaussian"][across_edge] >= cues["gaussian"][same_side_far]


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="cue encoding must be one of"):
        AddCueMapd("image", encoding="heatmap")
