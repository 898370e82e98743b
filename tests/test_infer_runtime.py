"""Run-time helpers of the infer task: the shared image loader and the network precision."""

from __future__ import annotations

import os
import threading

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.infers.image_cache import CachedLoadImaged, ImageLoader
from lib.networks import REFINEMENT_IN_CHANNELS, compute_copy, inference_dtype, midepseg_unet, native_bfloat16, predict_probability


class CountingLoader(ImageLoader):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.calls = 0
        self.second_call = threading.Event()
        self.release = threading.Event()

    def load(self, path):
        self.calls += 1
        if self.calls == 2:
            self.second_call.set()
        return super().load(path)

    def _read_checked(self, path):
        self.reads += 1
        self.release.wait(5)
        return super()._read_checked(path)


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.random.RandomState(0).rand(6, 7, 8).astype(np.float32), np.eye(4)), path)
    return str(path)


def test_prefetched_image_is_read_once_and_reused_by_the_request(volume):
    loader = CountingLoader()
    thread = loader.prefetch(volume)
    results = []
    request = threading.Thread(target=lambda: results.append(CachedLoadImaged("image", loader)({"image": volume})))
    request.start()
    assert loader.second_call.wait(5), "the request never reached the loader"
    loader.release.set()  # the prefetch was still reading when the request arrived
    thread.join(5)
    request.join(5)
    assert loader.reads == 1, "a request during a prefetch must wait for it, not read again"
    assert results[0]["image"] is loader.load(volume)[0]
    assert results[0]["image"].shape == (1, 6, 7, 8)


def test_prefetch_of_a_bad_file_fails_quietly_and_the_request_names_the_problem(tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("not an image")
    loader = ImageLoader()
    loader.prefetch(str(bad)).join(5)
    with pytest.raises(ValueError, match="cannot read image 'notes.nii.gz'"):
        CachedLoadImaged("image", loader)({"image": str(bad)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader.load(str(tmp_path / "missing.nii.gz"))


def test_precision_choice():
    assert inference_dtype("float32", "cpu") == torch.float32
    assert inference_dtype("bfloat16", "cpu") == torch.bfloat16
    assert inference_dtype("auto", "cpu") == (torch.bfloat16 if native_bfloat16() else torch.float32)
    assert inference_dtype("auto", "cuda") == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype("half", "cpu")


@pytest.mark.parametrize("dim, shape", [(2, (64, 64)), (3, (32, 32, 16))])
def test_bfloat16_probabilities_agree_with_float32(dim, shape):
    torch.manual_seed(0)
    network = midepseg_unet(dim).eval()
    image = torch.randn(1, 2, *shape)
    p32 = predict_probability(network, image, torch.float32)
    p16 = predict_probability(network, image, torch.bfloat16)
    assert p32.dtype == p16.dtype == torch.float32 and p32.shape == (1, 2, *shape)
    assert torch.allclose(p32.sum(1), torch.ones(1, *shape), atol=1e-5)
    assert float((p32 - p16).abs().max()) < 0.05


def test_bfloat16_runs_on_a_copy_that_follows_the_weights():
    """A bfloat16 pass leaves the network's float32 weights as they were (a float32 pass
    afterwards gives exactly what it gave before), and new weights loaded in place reach the
    bfloat16 copy."""
    torch.manual_seed(0)
    network = midepseg_unet(2).eval()
    image = torch.randn(1, 2, 32, 32)
    before = predict_probability(network, image, torch.float32)
    first = predict_probability(network, image, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert torch.equal(predict_probability(network, image, torch.float32), before)
    torch.manual_seed(1)
    network.load_state_dict(midepseg_unet(2).state_dict())
    reloaded = predict_probability(network, image, torch.bfloat16)
    assert float((reloaded - predict_probability(network, image, torch.float32)).abs().max()) < 0.05
    assert float((reloaded - first).abs().max()) > 0.05


def test_bfloat16_copy_is_made_once_per_weights_in_3d():
    """On the per-click path the bfloat16 copy is reused: the 3D pass's in-place switch of the
    network to channels-last must not count as a weight change (a new copy per call would cost
    a deep copy per request)."""
    network = midepseg_unet(3).eval()
    image = torch.randn(1, 2, 32, 32, 32)
    predict_probability(network, image, torch.bfloat16)
    held = compute_copy(network, torch.bfloat16)
    predict_probability(network, image, torch.bfloat16)
    assert compute_copy(network, torch.bfloat16) is held
    with torch.no_grad():  # as an optimiser step changes a weight
        next(network.parameters()).mul_(2.0)
    assert compute_copy(network, torch.bfloat16) is not held


def test_cached_click_distances_equal_the_fusion_definition():
    """With the paper's options the refinement's distance maps, built from the per-click
    cache, are exactly click_distances (the definition the fusion tests check), also when a
    click is added to cached ones."""
    from lib.infers.midepseg_infer import REFINEMENTS, _CachedClickDistances, _Refinement
    from lib.transforms.fusion import click_distances

    rng = np.random.RandomState(1)
    image = rng.rand(1, 40, 30, 20).astype(np.float32)
    margin = np.array([[5, 15, 10], [35, 15, 10], [20, 2, 10], [20, 28, 10], [20, 15, 1], [20, 15, 18]])
    refinement = _Refinement(REFINEMENTS["ifgc"], _CachedClickDistances(), None)
    fg, bg = np.zeros((0, 3), np.int64), np.array([[3, 3, 3]])
    for new_fg in ([20, 15, 10], [12, 9, 8]):
        fg = np.r_[fg, [new_fg]]
        data = {"work_image": image, "work_spacing": (1.0, 1.0, 2.0), "work_cache_key": "case",
                "margin_points_work": margin, "fg_clicks_work": fg, "bg_clicks_work": bg}
        got_fg, got_bg = refinement._distance_maps(data, fg, bg, None)
        d_fg, d_bg = click_distances(image[0], fg, bg, (1.0, 1.0, 2.0), margin)
        np.testing.assert_array_equal(got_fg, d_fg)
        np.testing.assert_array_equal(got_bg, d_bg)


def _stage1_probability(task, image_path: str, points: np.ndarray) -> np.ndarray:
    """The task's stage-1 foreground probability on the work grid (before any cut)."""
    data = {"image": image_path, "foreground": points.tolist(), "background": [], "margin_count": len(points),
            "device": "cpu"}
    for transform in task.pre_transforms(data):
        data = transform(data)
    return np.asarray(task.run_inferer(data, device="cpu")["pred"])


def test_stage1_ensemble_averages_the_members_probabilities(tmp_path):
    """``--conf stage1_ensemble``: the stage-1 probability is the mean of the task's network
    and each member's (two seeded random 2D networks on the same grid, so the mean commutes
    with the resampling to the work grid); a member's new weights are used on the next
    request; a missing member file stops the task at start-up, naming it."""
    from configs.midepseg import MIDeepSeg2DConfig

    image = np.zeros((96, 80), np.float32)
    image[30:60, 20:55] = 1.0
    image += np.random.default_rng(0).normal(0, 0.1, image.shape).astype(np.float32)
    image_path = str(tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(image, np.eye(4)), image_path)
    points = np.array([[32, 37], [57, 37], [45, 22], [45, 52]])
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        torch.manual_seed(seed)
        torch.save({"model": midepseg_unet(2).state_dict()}, tmp_path / name)

    def task(model: str, ensemble: str = "none"):
        config = MIDeepSeg2DConfig()
        config.init("midepseg_2d", str(tmp_path), {"stage1_ensemble": ensemble}, None)
        config.path = str(tmp_path / model)
        return config.infer()

    alone_a = _stage1_probability(task("a.pt"), image_path, points)
    alone_b = _stage1_probability(task("b.pt"), image_path, points)
    assert np.abs(alone_a - alone_b).max() > 0.05
    both = task("a.pt", "b.pt")
    np.testing.assert_allclose(_stage1_probability(both, image_path, points), (alone_a + alone_b) / 2, atol=1e-5)
    torch.manual_seed(3)
    torch.save({"model": midepseg_unet(2).state_dict()}, tmp_path / "b.pt")
    os.utime(tmp_path / "b.pt", (1e9, 1e9))  # a new version, whatever the clock's resolution
    alone_b = _stage1_probability(task("b.pt"), image_path, points)
    np.testing.assert_allclose(_stage1_probability(both, image_path, points), (alone_a + alone_b) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="no weights at .*missing.pt"):
        task("a.pt", "missing.pt")


def test_refinement_model_is_found_or_stops_the_task(tmp_path, monkeypatch):
    """``--conf refinement_model``: a file relative to the model folder or as given is the
    learned refinement's weights; a name that is in neither place stops the task at start-up,
    naming it (it used to warn and refine with the stage-1 network's fallback)."""
    from configs.midepseg import MIDeepSeg2DConfig

    models = tmp_path / "model"
    (models / "candidates").mkdir(parents=True)
    torch.save({"model": midepseg_unet(2, in_channels=REFINEMENT_IN_CHANNELS).state_dict()},
               models / "candidates" / "r.pt")
    monkeypatch.chdir(tmp_path)

    def learned_path(name: str) -> str:
        config = MIDeepSeg2DConfig()
        config.init("midepseg_2d", str(models), {"refinement": "learned", "refinement_model": name}, None)
        return config.infer()._learned.path

    in_folder = str(models / "candidates" / "r.pt")
    assert learned_path("candidates/r.pt") == in_folder
    assert learned_path("model/candidates/r.pt") == "model/candidates/r.pt"  # relative to the working folder
    assert learned_path(in_folder) == in_folder
    with pytest.raises(ValueError, match="refinement_model 'candidates/typo.pt': no such file"):
        learned_path("candidates/typo.pt")


@pytest.mark.parametrize("conf, expected", [({}, 1), ({"torch_threads": "2"}, 2)])
def test_a_request_sets_its_threads_torch_thread_count(tmp_path, conf, expected):
    """A request runs its torch work with the task's intra-op thread count, set on the thread
    that runs it (a server's worker thread): one by default in 2D (``DEFAULT_TORCH_THREADS``:
    small 2D tensors split over two OpenMP threads from a worker thread cost twice as much),
    ``--conf torch_threads`` otherwise; the 3D task keeps the process's count, and a count
    below one stops the task at start-up."""
    from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig

    image = np.zeros((64, 64), np.float32)
    image[20:44, 18:46] = 1.0
    image_path = str(tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(image, np.eye(4)), image_path)
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(tmp_path), conf, None)
    task = config.infer()
    seen = []
    process_threads = torch.get_num_threads()

    def request() -> None:
        torch.set_num_threads(3)  # whatever the thread had before
        try:
            _, result = task({"image": image_path, "foreground": [[21, 31], [42, 31], [31, 19], [31, 44]],
                              "background": [], "device": "cpu", "skip_writer": True})
            seen.append((torch.get_num_threads(), int(np.asarray(result["pred"]).sum())))
        finally:
            torch.set_num_threads(process_threads)  # the count new threads start with, as before the test

    worker = threading.Thread(target=request)
    worker.start()
    worker.join(60)
    assert seen and seen[0][0] == expected and seen[0][1] > 0
    config = MIDeepSeg3DConfig()
    config.init("midepseg_3d", str(tmp_path), {}, None)
    assert config.infer().torch_threads == torch.get_num_threads()
    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(tmp_path), {"torch_threads": "0"}, None)
    with pytest.raises(ValueError, match="torch_threads must be >= 1"):
        config.infer()
