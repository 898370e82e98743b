"""Training: a short CPU run lowers the Dice loss and publishes a checkpoint the infer path
loads; the shipped weights segment real held-out cases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from monailabel.tasks.train.basic_train import Context
from PIL import Image
from scipy import ndimage

from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig
from lib.metrics import dice
from lib.trainers.midepseg_train import CPUAutocastInferer, MIDeepSegTrain, group_partition, halving_schedule
from lib.trainers.train_cli import main as train_main
from lib.transforms.margin_points import extreme_margin_points
from scripts.interpolate_weights import interpolate_files, interpolate_state
from scripts.make_training_mix import copy_spec, link
from tests.conftest import stage1_mask

MODEL_DIR = Path(__file__).resolve().parents[1] / "apps" / "midepseg" / "model"
SAMPLE_STUDY = MODEL_DIR.parent / "sample_study"
SAMPLE_REFERENCES = MODEL_DIR.parent / "sample_references"


def _synthetic_set(folder: Path, n: int = 8, size: int = 96) -> tuple[Path, Path]:
    """Bright ellipses of random size and position on a noisy background."""
    rng = np.random.RandomState(0)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.randint(30, size - 30, 2)
        ry, rx = rng.randint(10, 22, 2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image = 80 + 100 * mask + rng.normal(0, 15, mask.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"s{i:02d}_img.png")
        Image.fromarray(mask.astype(np.uint8)).save(labels / f"s{i:02d}_img.png")
    return images, labels


def test_halving_schedule_matches_paper_shape():
    factor = halving_schedule(300)
    assert factor(0) == factor(149) == 1.0
    assert factor(150) == 0.5 and factor(179) == 0.5 and factor(180) == 0.25


def test_group_partition_keeps_subjects_together():
    items = [{"image": f"/x/{n:03d}_{k}HC.png"} for n in range(20) for k in ("", "2")]
    train, val = group_partition(items, 0.2, r"^(\d+)_", 0)
    subject = lambda d: Path(d["image"]).name.split("_")[0]  # noqa: E731
    assert {subject(d) for d in train}.isdisjoint({subject(d) for d in val})
    assert len(val) == 8 and len(train) == 32


def test_training_mix_copies_rare_types_within_their_subject(tmp_path):
    src = tmp_path / "src"
    pairs = []
    for name in ("pat0003_tc.nii.gz", "la-a.nii.gz", "la-b.nii.gz", "la-c.nii.gz"):
        for folder in ("images", "labels"):
            (src / folder).mkdir(parents=True, exist_ok=True)
            (src / folder / name).write_bytes(b"x")
        pairs.append((src / "images" / name, src / "labels" / name))
    out = tmp_path / "mix"
    assert link(pairs, out, dict([copy_spec("pat=3")])) == 6
    names = sorted(p.name for p in (out / "images").iterdir())
    assert [n for n in names if n.startswith("pat")] == ["pat0003_tc.nii.gz", "pat0003_tc_r1.nii.gz", "pat0003_tc_r2.nii.gz"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == names
    items = [{"image": str(out / "images" / n)} for n in names]
    for seed in range(8):  # a subject's copies are all on one side of the validation split
        _, val = group_partition(items, 0.5, r"^([^_.]+)[_.]", seed)
        val_names = {Path(d["image"]).name for d in val}
        assert len({n in val_names for n in names if n.startswith("pat")}) == 1, (seed, val_names)
    with pytest.raises(argparse.ArgumentTypeError, match="PREFIX=N"):
        copy_spec("pat=0")


def test_interpolated_weights_lie_on_the_line_between_the_two_files():
    base = {"w": torch.tensor([0.0, 2.0], dtype=torch.bfloat16), "n": torch.tensor(3)}
    tuned = {"w": torch.tensor([4.0, -2.0], dtype=torch.bfloat16), "n": torch.tensor(5)}
    assert torch.equal(interpolate_state(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate_state(base, tuned, 1.0)["w"], tuned["w"])
    mid = interpolate_state(base, tuned, 0.25)
    assert mid["w"].dtype == torch.bfloat16 and mid["w"].tolist() == [1.0, 1.0]
    assert mid["n"].item() == 5
    with pytest.raises(ValueError, match="keys"):
        interpolate_state(base, {"w": tuned["w"]}, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        interpolate_state(base, {"w": torch.zeros(3), "n": tuned["n"]}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state(base, tuned, 1.5)


def test_interpolated_file_keeps_the_stored_grid_and_refuses_two_grids(tmp_path):
    """The shipped 2D file stores no grid, its fine-tune does: the result keeps the grid the
    infer task must run the network on; two different grids are an error, not a silent pick."""
    state = {"w": torch.ones(2)}
    torch.save({"model": state}, tmp_path / "base.pt")
    torch.save({"model": {"w": torch.zeros(2)}, "grid": [64, 64]}, tmp_path / "tuned.pt")
    interpolate_files(tmp_path / "base.pt", tmp_path / "tuned.pt", 0.5, tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["grid"] == [64, 64] and out["model"]["w"].tolist() == [0.5, 0.5]
    torch.save({"model": state, "grid": [96, 96]}, tmp_path / "base.pt")
    with pytest.raises(ValueError, match="grid differs"):
        interpolate_files(tmp_path / "base.pt", tmp_path / "tuned.pt", 0.5, tmp_path / "out.pt")


def test_short_cpu_training_lowers_loss_and_publishes_loadable_weights(tmp_path):
    images, labels = _synthetic_set(tmp_path / "data")
    output = tmp_path / "model" / "midepseg_2d.pt"
    torch.manual_seed(0)
    train_main([
        "--dim", "2", "--images", str(images), "--labels", str(labels), "--output", str(output),
        "--work-dir", str(tmp_path / "work"), "--epochs", "6", "--batch-size", "2", "--lr", "1e-3",
        "--val-fraction", "0.25", "--subject-pattern", r"^(s\d+)_", "--from-scratch", "--threads", "2",
        "--spatial-size", "48", "48",
    ])
    curves = json.loads((tmp_path / "work" / "runs" / "cli" / "curves.json").read_text())
    losses = curves["loss"]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < losses[0] - 0.05, losses
    assert (tmp_path / "work" / "runs" / "cli" / "curves.png").stat().st_size > 0

    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "grid"} and checkpoint["grid"] == [48, 48]

    config = MIDeepSeg2DConfig()
    config.init("midepseg_2d", str(output.parent), {}, None)
    task = config.infer()
    label = np.asarray(LoadImage(image_only=True)(str(labels / "s00_img.png"))) > 0
    points = extreme_margin_points(label)
    _, data = task({"image": str(images / "s00_img.png"), "foreground": points.tolist(), "background": [],
                    "device": "cpu", "skip_writer": True, "logging": "WARNING"})
    assert task.get_path() == str(output)
    assert task.network_grid() == (48, 48) and np.shape(data["stage1_input"]) == (2, 48, 48)  # the grid it trained on
    assert dice(np.asarray(data["pred"]) > 0, label) > 0.7


def test_bfloat16_training_runs_the_forward_pass_under_cpu_autocast():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["autocast"] = torch.is_autocast_cpu_enabled()
            return torch.nn.functional.conv2d(x, torch.ones(2, 1, 3, 3))

    out = CPUAutocastInferer()(torch.ones(1, 1, 8, 8), Probe())
    assert seen["autocast"] and out.dtype == torch.float32 and float(out[0, 0, 4, 4]) == 9.0
    context = Context()
    context.device = torch.device("cpu")
    trainer = MIDeepSegTrain("x", torch.nn.Identity(), 2, (8, 8), "x.pt", precision="bfloat16")
    assert isinstance(trainer.train_inferer(context), CPUAutocastInferer)
    assert not isinstance(MIDeepSegTrain("x", torch.nn.Identity(), 2, (8, 8), "x.pt").train_inferer(context), CPUAutocastInferer)
    with pytest.raises(ValueError, match="precision"):
        MIDeepSegTrain("x", torch.nn.Identity(), 2, (8, 8), "x.pt", precision="float16")


def _stage1_dice(config_class, name: str, image: str, label: np.ndarray, points: np.ndarray | None = None, **request) -> float:
    """Stage-1 Dice of the shipped weights from ``points`` (default: the label's extreme
    margin points); ``request``: extra request keys (``slice_axis``)."""
    config = config_class()
    config.init(name, str(MODEL_DIR), {}, None)
    points = extreme_margin_points(label) if points is None else points
    return dice(stage1_mask(config.infer(), image, points, **request).reshape(label.shape), label)


@pytest.mark.parametrize("name", ["797_HC.png", "802_HC.png", "016_HC.png"])
def test_shipped_2d_weights_on_held_out_hc18(shared_data, name):
    """Held-out HC18 subjects (validation split): the shipped 2D model reached a mean
    stage-1 Dice of about 0.97 on them (model card); 0.93 leaves room for CPU/BLAS jitter
    and the weakest images."""
    label = np.asarray(LoadImage(image_only=True)(str(shared_data / "hc18" / "labels" / name))) > 0
    value = _stage1_dice(MIDeepSeg2DConfig, "midepseg_2d", str(shared_data / "hc18" / "images" / name), label)
    assert value > 0.93, value


def test_shipped_3d_weights_on_held_out_tumour(shared_data):
    """Tumour core of the held-out BraTS case (pat0005, never trained on): 0.679 with the
    shipped stage-1 pair (model card; 0.606 for ``midepseg_3d.pt`` alone); the bound leaves
    room for CPU/BLAS and precision (bfloat16/float32) jitter."""
    case = shared_data / "brats" / "brats_2013_pat0005_1"
    label = np.isin(np.asarray(LoadImage(image_only=True)(str(case / "OTMultiClass.nii.gz"))), (1, 3, 4))
    value = _stage1_dice(MIDeepSeg3DConfig, "midepseg_3d", str(case / "T1c_subtrMeanDivStd.nii.gz"), label)
    assert value > 0.55, value


@pytest.mark.parametrize("image, bound", [("abdomen_ct.nii.gz", 0.75), ("brain_t1.nii.gz", 0.65)])
def test_shipped_3d_weights_on_unseen_objects(image, bound):
    """Objects no training set contained (the spleen and the left lateral ventricle of the
    sample study shipped in the repo; in the dev sets, from the same sources, the shipped
    pair reaches 0.93 on the spleen and 0.86 on the left lateral ventricle, model card)."""
    label = np.asarray(LoadImage(image_only=True)(str(SAMPLE_REFERENCES / image))) > 0
    dice_value = _stage1_dice(MIDeepSeg3DConfig, "midepseg_3d", str(SAMPLE_STUDY / image), label)
    assert dice_value > bound, dice_value


# 3D, one case per type held out of every 3D mix (issue 13): the first left-atrium volume (the
# selection set's, never trained on) and the spleen CT (a type no mix holds). Stage-1 Dice of
# the shipped pair (`evaluate_generalisation.py --dims 3 --folder runs/data/select3d`, session
# 24): 0.760 and 0.913; bounds 0.05 below.
@pytest.mark.parametrize("image, label, bound", [
    ("la_mri/06SR5RBREL16DQ6M8LWS/image.nii.gz", "la_mri/06SR5RBREL16DQ6M8LWS/label.nii.gz", 0.71),
    ("spleen_ct/ct.nii.gz", "spleen_ct/label.nii.gz", 0.86),
])
def test_shipped_3d_weights_on_held_out_types(shared_data, image, label, bound):
    reference = np.asarray(LoadImage(image_only=True)(str(shared_data / label))) >= 0.5
    value = _stage1_dice(MIDeepSeg3DConfig, "midepseg_3d", str(shared_data / image), reference)
    assert value > bound, value


def _largest_slice_case(volume: Path, label_file: Path) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """A volume for the 2D model: the reference on its largest axial slice, the margin points
    on that slice and the request keys that say so (as Slicer and OHIF send them)."""
    label = np.asarray(LoadImage(image_only=True)(str(label_file))) >= 0.5
    k = int(np.argmax(label.sum(axis=(0, 1))))
    reference = np.zeros_like(label)
    reference[..., k] = label[..., k]
    points = extreme_margin_points(label[..., k])
    return str(volume), reference, np.concatenate([points, np.full((len(points), 1), k)], axis=1), {"slice_axis": 2}


def _component_case(image: Path, label_file: Path) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """A 2D image whose label holds many objects: the largest connected component."""
    components, count = ndimage.label(np.asarray(LoadImage(image_only=True)(str(label_file))) > 0)
    sizes = ndimage.sum_labels(components > 0, components, index=np.arange(1, count + 1))
    reference = components == 1 + int(np.argmax(sizes))
    return str(image), reference, extreme_margin_points(reference), {}


# One case per new data type (issue 13), types and subjects never trained on (the first
# left-atrium volume and the first PH2 image are held out, prepare_generic_objects.py;
# spleen CT, spinal cord and SEM axons are held out as whole types). Stage-1 Dice measured
# with the shipped 2D weights (model card, the same objects in make_selection_set.py):
# left atrium 0.920, dermoscopy (RGB PNG read as luminance) 0.950, spinal cord T2 0.913,
# spleen CT 0.964, the largest SEM axon 0.960; bounds 0.05-0.06 below.
HELD_OUT_TYPES = {
    "left atrium MRI": (_largest_slice_case, "la_mri/06SR5RBREL16DQ6M8LWS/image.nii.gz", "la_mri/06SR5RBREL16DQ6M8LWS/label.nii.gz", 0.87),
    "dermoscopy RGB": (_component_case, "ph2/images/IMD002.png", "ph2/labels/IMD002.png", 0.90),
    "spinal cord T2": (_largest_slice_case, "spinal_cord/t2_t2.nii.gz", "spinal_cord/t2_t2_seg-manual.nii.gz", 0.86),
    "spleen CT": (_largest_slice_case, "spleen_ct/ct.nii.gz", "spleen_ct/label.nii.gz", 0.91),
    "SEM axon": (_component_case, "sem_axons/images/sub-rat2_sample-data5_SEM.png", "sem_axons/axon/sub-rat2_sample-data5_SEM.png", 0.90),
}


@pytest.mark.parametrize("kind", sorted(HELD_OUT_TYPES))
def test_shipped_2d_weights_on_held_out_types(shared_data, kind):
    make_case, image, label, bound = HELD_OUT_TYPES[kind]
    image_path, reference, points, request = make_case(shared_data / image, shared_data / label)
    value = _stage1_dice(MIDeepSeg2DConfig, "midepseg_2d", image_path, reference, points, **request)
    assert value > bound, value
