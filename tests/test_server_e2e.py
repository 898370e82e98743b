"""End-to-end tests of the MIDeepSeg app through a real MONAI Label server.

One server runs for the whole module, in its own process group, on a free loopback port,
with a temporary studies folder (an HC18 PNG, the TotalSegmentator CT and a cropped CT
re-saved with a permuted, flipped, non-RAS affine) and ``--conf model_dir <tmp>`` so that
training through the server never touches the shipped weights. Requests go through
``MONAILabelClient`` (what the Python client and, in effect, Slicer/OHIF send) or raw HTTP
where the status code matters.

Quality bounds (Dice) apply only when the shipped weights exist; without them the server
runs an untrained network and only the request/response contract is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lib.app_server import start_app_server
from lib.processes import free_port, stop_group

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
SHIPPED_MODELS = REPO_ROOT / "apps" / "midepseg" / "model"

HC18_CASE = "800_HC"  # an HC18 subject with NNN >= 790
SPLEEN, LIVER = 1, 5  # TotalSegmentator v2 classes
CROP = (slice(0, 60), slice(10, 72), slice(None))  # CT crop around the spleen for the non-RAS copy
TRAIN_TIMEOUT_S = 300

# Quality bounds, applied when the shipped weights exist.
# HC18: the 2D network is trained on HC18 fetal heads (a seen object class); stage 1 on
# this case measures ~0.98 with the shipped weights.
# 0.85 leaves room for retrained weights while still failing on a mis-registered,
# transposed or mis-oriented result.
HC18_MIN_DICE = 0.85


def _trained(model: str) -> bool:
    return (SHIPPED_MODELS / f"{model}.pt").is_file()


# ---------------------------------------------------------------------------- server fixture


@dataclass
class Server:
    url: str
    root: Path
    studies: Path
    model_dir: Path
    refs: Path
    log: Path
    client: object  # MONAILabelClient

    def label_files(self) -> list[str]:
        labels = self.studies / "labels"
        return sorted(str(p.relative_to(labels)) for p in labels.rglob("*") if p.is_file()) if labels.is_dir() else []


def _write_non_ras_copy(image_src: Path, label_src: Path, image_dst: Path, label_dst: Path, value: int) -> None:
    """Crop the CT, swap its first two axes and flip axes 0 and 2; save with the matching
    affine (axis codes P, R, I): same anatomy, non-identity non-RAS voxel grid."""
    import nibabel as nib

    image, label = nib.load(str(image_src)), nib.load(str(label_src))

    def transform(arr):
        return np.ascontiguousarray(np.asarray(arr)[CROP].transpose(1, 0, 2)[::-1, :, ::-1])

    data = transform(image.dataobj)
    mask = (transform(label.dataobj) == value).astype(np.uint8)
    n0, _, n2 = data.shape
    # new index (a, b, c) <- cropped index (b, n0 - 1 - a, n2 - 1 - c) <- original (+ crop start)
    new_to_old = np.array(
        [[0, 1, 0, CROP[0].start], [-1, 0, 0, CROP[1].start + n0 - 1], [0, 0, -1, n2 - 1], [0, 0, 0, 1]], float
    )
    affine = image.affine @ new_to_old
    assert nib.aff2axcodes(affine) == ("P", "R", "I")
    nib.save(nib.Nifti1Image(data, affine), str(image_dst))
    nib.save(nib.Nifti1Image(mask, affine), str(label_dst))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    hc18_image = SHARED_DATA / "hc18" / "images" / f"{HC18_CASE}.png"
    hc18_label = SHARED_DATA / "hc18" / "labels" / f"{HC18_CASE}.png"
    ct, ct_labels = SHARED_DATA / "totalseg_ct" / "ct.nii.gz", SHARED_DATA / "totalseg_ct" / "labels.nii.gz"
    missing = [p for p in (hc18_image, hc18_label, ct, ct_labels) if not p.is_file()]
    if missing:
        pytest.skip(f"development data incomplete: {missing}")
    pytest.importorskip("requests")
    from monailabel.client import MONAILabelClient

    root = tmp_path_factory.mktemp("midepseg_server")
    studies, refs, model_dir, client_dir = (root / n for n in ("studies", "refs", "model", "client"))
    for d in (studies, refs, client_dir):
        d.mkdir()
    shutil.copy(hc18_image, studies / f"{HC18_CASE}.png")
    shutil.copy(hc18_label, refs / f"{HC18_CASE}.png")
    shutil.copy(ct, studies / "ct.nii.gz")
    shutil.copy(ct_labels, refs / "ct_labels.nii.gz")
    _write_non_ras_copy(ct, ct_labels, studies / "ct_pri.nii.gz", refs / "ct_pri_spleen.nii.gz", SPLEEN)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    srv = Server(url, root, studies, model_dir, refs, log, MONAILabelClient(url, tmpdir=str(client_dir)))
    try:
        proc, seconds = start_app_server(studies, port, log, conf={"model_dir": str(model_dir)})
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        print(f"\nserver up in {seconds:.1f} s at {url} (log {log})")
        yield srv
    finally:
        stop_group(proc)


# ---------------------------------------------------------------------------- helpers


def load(path) -> np.ndarray:
    """An image or label as MONAI's LoadImage gives it (the axes the server's points use)."""
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(str(path)))


def load_with_affine(path):
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(path))
    return np.asarray(img), np.asarray(img.affine), np.asarray(img.pixdim)


def infer(server: Server, model: str, image: str, foreground, background=(), label_in=None, **extra):
    """``(mask, result json, affine)`` of one infer request through MONAILabelClient
    (``label_in``: a mask file to upload as the ``label`` to start from)."""
    params = {
        "foreground": np.asarray(foreground, dtype=np.int64).tolist(),
        "background": np.asarray(background, dtype=np.int64).tolist(),
        "result_extension": ".nrrd",
        "result_dtype": "uint8",
        **extra,
    }
    path, result = server.client.infer(model, image, params, label_in=label_in)
    try:
        mask, affine, _ = load_with_affine(path)
    finally:
        os.unlink(path)
    return mask, result, affine


def post_infer(server: Server, model: str, image: str, params: dict):
    """Raw POST /infer/{model}?image=ID with the multipart ``params`` field."""
    import requests

    return requests.post(
        f"{server.url}/infer/{model}",
        params={"image": image},
        files={"params": (None, json.dumps(params))},
        timeout=120,
    )


def values_at(mask: np.ndarray, points) -> list[int]:
    return [int(mask[tuple(p)]) for p in np.asarray(points, dtype=np.int64).reshape(-1, mask.ndim)]


def near_background(reference: np.ndarray, distance: int = 3) -> np.ndarray:
    """A background voxel ``distance`` voxels outside the object (a plausible background click)."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(reference, iterations=distance) & ~ndimage.binary_dilation(
        reference, iterations=distance - 1
    )
    candidates = np.argwhere(ring)
    return candidates[len(candidates) // 2]


def dice(a, b) -> float:
    from lib.metrics import dice as _dice

    return _dice(a, b)


def hc18_case(server: Server):
    image = load(server.studies / f"{HC18_CASE}.png")
    reference = load(server.refs / f"{HC18_CASE}.png") > 0
    return image, reference


def ct_case(server: Server, image_id: str, value: int):
    """``(image, reference mask, affine, spacing)`` of a CT study and one of its organs."""
    image, affine, spacing = load_with_affine(server.studies / f"{image_id}.nii.gz")
    label_file = server.refs / ("ct_labels.nii.gz" if image_id == "ct" else "ct_pri_spleen.nii.gz")
    labels = load(label_file)
    return image, labels == (value if image_id == "ct" else 1), affine, spacing


# ---------------------------------------------------------------------------- tests


def test_info_lists_both_models(server):
    info = server.client.info()
    models = info["models"]
    for name, dim, margin in (("midepseg_2d", 2, 4), ("midepseg_3d", 3, 6)):
        assert name in models, sorted(models)
        assert models[name]["type"] == "deepgrow"
        assert models[name]["dimension"] == dim
        assert models[name]["config"]["margin_points"] == margin
    assert {"midepseg_2d", "midepseg_3d"} <= set(info["trainers"])
    assert {"first", "random"} <= set(info["strategies"])


def test_2d_png_margin_points_and_background_click(server):
    from lib.transforms.margin_points import extreme_margin_points

    image, reference = hc18_case(server)
    assert image.shape == reference.shape == (800, 540)  # PNG loads as (W, H)
    margin = extreme_margin_points(reference)
    assert len(margin) == 4

    mask, result, _ = infer(server, "midepseg_2d", HC18_CASE, margin)
    assert mask.shape == image.shape
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert values_at(mask, margin) == [1] * len(margin)
    assert result["stage"] == 1 and result["margin_points"] == 4 and result["refinement_clicks"] == 0
    stage1 = dice(mask, reference)

    background = near_background(reference)[None]
    mask2, result2, _ = infer(server, "midepseg_2d", HC18_CASE, margin, background)
    assert mask2.shape == image.shape
    assert values_at(mask2, margin) == [1] * len(margin)
    assert values_at(mask2, background) == [0]
    assert result2["stage"] == 2 and result2["refinement_clicks"] == 1
    assert result2["stage1_cached"] is True, "same image and margin points: stage 1 must come from the cache"
    stage2 = dice(mask2, reference)
    print(f"HC18 {HC18_CASE}: Dice stage 1 {stage1:.4f}, with a background click {stage2:.4f}")
    if _trained("midepseg_2d"):
        assert stage1 > HC18_MIN_DICE
        assert stage2 > HC18_MIN_DICE


def test_fewer_than_two_margin_points_gives_empty_mask(server):
    image, reference = hc18_case(server)
    point = np.argwhere(reference)[len(np.argwhere(reference)) // 2]
    mask, result, _ = infer(server, "midepseg_2d", HC18_CASE, [point])
    assert mask.shape == image.shape
    assert not mask.any()
    assert result["stage"] == 0 and "margin points" in result["message"]


def test_3d_model_on_ct_and_non_ras_copy(server):
    """The 3D model on the RAS CT and on its cropped non-RAS (P, R, I) copy: the clicked
    voxels, the shape and the affine of the result follow each file's own voxel grid, and
    the spleen is found as well in the permuted/flipped grid as in the original one."""
    import nibabel as nib

    from lib.transforms.crop import relaxed_box
    from lib.transforms.margin_points import extreme_margin_points

    dices = {}
    for image_id in ("ct", "ct_pri"):
        image, reference, affine, spacing = ct_case(server, image_id, SPLEEN)
        # the server's points are the file's own (i, j, k): LoadImage does not reorient
        raw = np.asarray(nib.load(str(server.studies / f"{image_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(image, raw)
        margin = extreme_margin_points(reference, spacing)
        assert len(margin) == 6
        if image_id == "ct_pri":  # the clicks land on the spleen of the original CT (world coordinates)
            original = nib.load(str(server.refs / "ct_labels.nii.gz"))
            world = affine @ np.c_[margin, np.ones(len(margin))].T
            ijk = np.rint(np.linalg.solve(original.affine, world)[:3].T).astype(np.int64)
            assert values_at(load(server.refs / "ct_labels.nii.gz"), ijk) == [SPLEEN] * len(margin)
        background = near_background(reference, 2)[None]

        mask, result, out_affine = infer(server, "midepseg_3d", image_id, margin, background)
        assert mask.shape == image.shape
        assert values_at(mask, margin) == [1] * len(margin)
        assert values_at(mask, background) == [0]
        np.testing.assert_allclose(out_affine, affine, atol=1e-3)
        box = relaxed_box(margin, image.shape, spacing)
        outside = mask.copy()
        outside[tuple(slice(a, b) for a, b in zip(box[0], box[1]))] = 0
        assert not outside.any(), f"{image_id}: the result must stay inside the relaxed box of the margin points"
        dices[image_id] = dice(mask, reference)
        print(f"3D model, {image_id} spleen: Dice {dices[image_id]:.4f}, {result['voxels']} voxels, timing {result['timing']}")
    if _trained("midepseg_3d") and dices["ct"] >= 0.3:
        # the network is not flip/transpose invariant (trained with flips), so allow a margin;
        # clicks read in the wrong frame would segment the wrong region (Dice near 0)
        assert dices["ct_pri"] >= 0.5 * dices["ct"], dices


def test_2d_model_on_3d_ct_slice(server):
    from lib.transforms.margin_points import extreme_margin_points

    image, reference, affine, spacing = ct_case(server, "ct", LIVER)
    k = int(np.argmax(reference.sum(axis=(0, 1))))
    margin2d = extreme_margin_points(reference[:, :, k], spacing[:2])
    margin = np.c_[margin2d, np.full(len(margin2d), k)]
    mask, result, out_affine = infer(server, "midepseg_2d", "ct", margin)
    assert mask.shape == image.shape
    assert values_at(mask, margin) == [1] * len(margin)
    others = np.delete(mask, k, axis=2)
    assert not others.any(), "the 2D model must only write the clicked slice"
    assert mask[:, :, k].any()
    np.testing.assert_allclose(out_affine, affine, atol=1e-3)
    value = dice(mask[:, :, k], reference[:, :, k])
    print(f"2D model on CT slice {k} (liver): Dice {value:.4f}")
    if _trained("midepseg_2d"):
        # the liver is an unseen object: 0.84 on its largest slice in the model card
        assert value > 0.7, value


def _robot_sequence(server, model, image_id, reference, margin, spacing, n_clicks=3, slice_k=None):
    """Stage 1 then ``n_clicks`` robot corrective clicks, resending all points each time.
    Returns the Dice after each request (on the slice for a 2D model on a volume)."""
    from lib.transforms.robot_user import corrective_click

    def view(mask):
        return mask if slice_k is None else mask[:, :, slice_k]

    def full(point):
        return point if slice_k is None else np.r_[point, slice_k]

    foreground, background = [full(p) for p in margin], []
    mask, result, _ = infer(server, model, image_id, foreground)
    dices = [dice(view(mask), reference)]
    for _ in range(n_clicks):
        clicked = np.array([p if slice_k is None else p[:2] for p in foreground + background])
        click = corrective_click(view(mask), reference, spacing, clicked)
        if click is None:
            break
        point, is_fg = click
        (foreground if is_fg else background).append(full(point))
        mask, result, _ = infer(server, model, image_id, foreground, background)
        assert result["stage1_cached"] is True
        assert values_at(mask, foreground) == [1] * len(foreground)
        assert values_at(mask, background) == [0] * len(background)
        dices.append(dice(view(mask), reference))
    return dices


def test_robot_clicks_improve_dice(server):
    """3D model on the unseen CT liver: stage 1 is imperfect, then 3 robot corrective clicks
    with all points resent. The clicked voxels alone (forced to their label) move Dice by
    < 0.0001 on a liver of ~39,000 voxels, so a gain of 0.03 needs the refinement (the default
    repaired IF-GC with the 3D graph cut of session 16: 0.775 -> 0.861 with radius limit 5, 0.853
    with 3, measured with the shipped weights). The spleen was this test's case until then; with that cut its stage 1
    reaches 0.926 and 3 clicks add 0.002."""
    from lib.transforms.margin_points import extreme_margin_points

    case = "3d_model_ct_liver"
    _, liver, _, spacing = ct_case(server, "ct", LIVER)
    dices = _robot_sequence(server, "midepseg_3d", "ct", liver, extreme_margin_points(liver, spacing), spacing)
    print(f"{case}: Dice " + " -> ".join(f"{d:.4f}" for d in dices))
    assert len(dices) == 4, f"the robot found no error to correct: {dices}"
    assert dices[0] < 0.9, f"stage 1 is nearly perfect, the case tests nothing: {dices}"
    assert dices[-1] > dices[0] + 0.03, f"corrective clicks did not improve beyond the clicked voxels: {dices}"


def test_bad_requests_give_4xx_and_server_keeps_serving(server):
    import requests

    from lib.transforms.margin_points import extreme_margin_points

    _, reference = hc18_case(server)
    margin = extreme_margin_points(reference).tolist()
    _, liver, _, spacing = ct_case(server, "ct", LIVER)
    margin3d = extreme_margin_points(liver, spacing).tolist()
    one_slice = [p[:2] + [12] for p in margin3d]
    labels_before = server.label_files()

    cases = [
        ("unknown image id", "midepseg_2d", "no_such_image", {"foreground": margin}, "no_such_image"),
        ("point outside", "midepseg_2d", HC18_CASE, {"foreground": margin[:3] + [[5000, 10]]}, "outside"),
        ("3 coordinates on a 2D image", "midepseg_2d", HC18_CASE, {"foreground": [p + [0] for p in margin]}, "coordinates"),
        ("strings", "midepseg_2d", HC18_CASE, {"foreground": [["a", "b"]] + margin[1:]}, "numbers"),
        ("2D model, points on different slices", "midepseg_2d", "ct", {"foreground": margin3d}, "same index"),
        ("2 coordinates for the 3D model", "midepseg_3d", "ct", {"foreground": [p[:2] for p in margin3d]}, "3 coordinates"),
        ("empty point lists", "midepseg_2d", HC18_CASE, {"foreground": [], "background": []}, "no points"),
        ("margin_points='abc'", "midepseg_2d", HC18_CASE, {"foreground": margin, "margin_points": "abc"}, "margin_points"),
        ("lamda=-1", "midepseg_2d", HC18_CASE, {"foreground": margin, "lamda": -1}, "lamda"),
        ("lamda=null", "midepseg_2d", HC18_CASE, {"foreground": margin, "lamda": None}, "lamda"),
        ("sigma='nan'", "midepseg_2d", HC18_CASE, {"foreground": margin, "sigma": "nan"}, "sigma"),
        ("slice_axis='abc'", "midepseg_2d", "ct", {"foreground": one_slice, "slice_axis": "abc"}, "slice_axis"),
        ("a server path as image id", "midepseg_2d", str(server.log), {"foreground": margin}, "not in the datastore"),
        ("an internal key", "midepseg_2d", HC18_CASE, {"foreground": margin, "slice": [0, 1, [9, 9, 9]]}, "slice"),
        ("sigma=1e-300", "midepseg_2d", HC18_CASE, {"foreground": margin, "sigma": 1e-300}, "sigma"),
        ("unknown model", "no_such_model", HC18_CASE, {"foreground": margin}, "no_such_model"),
    ]
    for what, model, image_id, params, needle in cases:
        response = post_infer(server, model, image_id, params)
        assert 400 <= response.status_code < 500, f"{what}: HTTP {response.status_code} {response.text[:300]}"
        assert needle.lower() in response.text.lower(), f"{what}: the answer does not name the problem: {response.text[:300]}"
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200, f"server stopped after {what}"
    # the client raises on them too
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException, match="40"):
        server.client.infer("midepseg_2d", HC18_CASE, {"foreground": [["x", "y"]]})
    # a good request still works, and no stored label was written or changed
    mask, result, _ = infer(server, "midepseg_2d", HC18_CASE, margin)
    assert result["stage"] == 1 and values_at(mask, margin) == [1] * len(margin)
    assert server.label_files() == labels_before


def test_datastore_labels_and_active_learning(server):
    images = {"ct", "ct_pri", HC18_CASE}
    first = server.client.next_sample("first", {})
    assert first["id"] in images
    unlabeled = {i for i, o in server.client.datastore()["objects"].items() if "final" not in o.get("labels", {})}
    assert first["id"] == sorted(unlabeled)[0]  # First: the first unlabelled image id in sorted order

    saved = server.client.save_label(HC18_CASE, str(server.refs / f"{HC18_CASE}.png"), tag="final")
    assert saved["image"] == HC18_CASE
    objects = server.client.datastore()["objects"]
    assert set(objects) == images
    assert "final" in objects[HC18_CASE]["labels"]
    stored = server.studies / "labels" / "final" / f"{HC18_CASE}.png"
    assert stored.is_file()
    np.testing.assert_array_equal(load(stored) > 0, load(server.refs / f"{HC18_CASE}.png") > 0)

    for strategy in ("first", "random"):
        sample = server.client.next_sample(strategy, {})
        assert sample["id"] in images and Path(sample["path"]).is_file(), sample
        # both strategies pick among unlabelled images only (monailabel's get_unlabeled_images)
        assert sample["id"] != HC18_CASE, f"{strategy} returned the labelled image"
    assert server.client.next_sample("first", {})["id"] == "ct"


def _train(server: Server, model: str, request: dict) -> tuple[str, str]:
    """POST /train/<model>, wait for the run; its final status and the last lines of its log."""
    started = server.client.train_start(model, request)
    assert started["status"] in ("SUBMITTED", "RUNNING", "QUEUED"), started
    start = time.perf_counter()
    while True:
        status = server.client.train_status()
        if status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
            break
        if time.perf_counter() - start > TRAIN_TIMEOUT_S:
            server.client.train_stop()
            pytest.fail(f"training did not finish within {TRAIN_TIMEOUT_S} s")
        time.sleep(2.0)
    print(f"training {model}: {status.get('status')} in {time.perf_counter() - start:.1f} s")
    return status.get("status"), "\n".join(str(line) for line in (status.get("details") or [])[-20:])


def test_training_through_server_publishes_model(server):
    """POST /train/midepseg_2d on the one labelled HC18 image (val_split 0: the trainer's
    key-metric checkpoint is published after the epoch), then the infer task reloads."""
    import torch

    from lib.networks import midepseg_unet
    from lib.transforms.margin_points import extreme_margin_points

    server.client.save_label(HC18_CASE, str(server.refs / f"{HC18_CASE}.png"), tag="final")
    _, reference = hc18_case(server)
    margin = extreme_margin_points(reference)
    model_file = server.model_dir / "midepseg_2d.pt"
    infer(server, "midepseg_2d", HC18_CASE, margin)
    _, result, _ = infer(server, "midepseg_2d", HC18_CASE, margin)
    assert result["stage1_cached"] is True
    before = model_file.stat().st_mtime_ns if model_file.exists() else None

    request = {"max_epochs": 1, "val_split": 0.0, "train_batch_size": 1, "dataset": "Dataset", "pretrained": True}
    status, details = _train(server, "midepseg_2d", request)
    assert status == "DONE", details

    assert model_file.is_file()
    assert model_file.stat().st_mtime_ns != before, "training did not publish a new model file"
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=True)
    assert isinstance(checkpoint, dict) and set(checkpoint) == {"model", "grid"} and checkpoint["grid"] == [64, 64]
    midepseg_unet(2).load_state_dict(checkpoint["model"], strict=True)
    assert not list(server.model_dir.glob("*.tmp")) and not list(server.model_dir.glob(".*.tmp"))
    assert (server.model_dir / "train_midepseg_2d").is_dir(), "training runs must go under --conf model_dir"

    mask, result, _ = infer(server, "midepseg_2d", HC18_CASE, margin)
    assert result["stage1_cached"] is False, "a new model file must invalidate the cached stage 1"
    assert values_at(mask, margin) == [1] * len(margin)


def test_training_the_learned_refinement_through_server(server):
    """POST /train/midepseg_2d_refine (the 2D default's refinement runs a network; the 3D
    default's does not, so no 3D refinement trainer is offered): a bad option fails the run
    naming it and publishes nothing; a short run publishes refinement weights, which the next
    click's proposal loads (the result's ``refinement_weights`` names the file that answered)."""
    import torch
    from scipy import ndimage

    from lib.transforms.margin_points import extreme_margin_points

    assert "midepseg_2d_refine" in server.client.info()["trainers"]
    assert "midepseg_3d_refine" not in server.client.info()["trainers"]
    server.client.save_label(HC18_CASE, str(server.refs / f"{HC18_CASE}.png"), tag="final")
    refine = server.model_dir / "midepseg_2d_refine.pt"
    before = refine.stat().st_mtime_ns

    status, details = _train(server, "midepseg_2d_refine", {"minutes": "soon"})
    assert status != "DONE" and "minutes" in details, details
    assert refine.stat().st_mtime_ns == before

    _, reference = hc18_case(server)
    margin = extreme_margin_points(reference)
    inside = np.argwhere(reference & (ndimage.distance_transform_edt(reference) > 8))[:1]
    points = np.concatenate([margin, inside])
    _, shipped, _ = infer(server, "midepseg_2d", HC18_CASE, points)
    refine.unlink()  # from the stage-1 weights: a run then always publishes (from published weights, only a better one)
    _, none, _ = infer(server, "midepseg_2d", HC18_CASE, points)
    assert len(shipped["refinement_weights"]) == 16 and none["refinement_weights"] == ""
    status, details = _train(server, "midepseg_2d_refine", {"minutes": 0.05, "batch_size": 2, "max_rounds": 1})
    assert status == "DONE", details
    assert refine.is_file(), "the run did not publish"
    assert torch.load(refine, map_location="cpu", weights_only=True)["grid"] == [64, 64]
    assert (server.model_dir / "train_midepseg_2d_refine").is_dir(), "runs must go under --conf model_dir"

    mask, trained, _ = infer(server, "midepseg_2d", HC18_CASE, points)
    assert values_at(mask, points) == [1] * len(points)
    assert len(trained["refinement_weights"]) == 16 and trained["refinement_weights"] != shipped["refinement_weights"]


def _post_with_label(server: Server, model: str, image: str, params: dict, name: str, content: bytes):
    import requests

    return requests.post(
        f"{server.url}/infer/{model}",
        params={"image": image},
        files={"params": (None, json.dumps(params)), "label": (name, content)},
        timeout=120,
    )


def test_refining_an_uploaded_mask(server, tmp_path):
    """``/infer`` with MONAI Label's ``label`` upload: the clicks refine that mask instead of
    stage 1 (no margin points). An automatic segmentation that leaks (the spleen plus a
    10 mm ball of the tissue next to it, ~160 voxels) comes back unchanged without clicks;
    two robot clicks remove most of the leak, where forcing the clicked voxels alone removes
    2 voxels (measured with the 3D default of session 16, lamda 20 / sigma 0.03, radius limit 5:
    99 % of the leak removed, Dice 0.9917 -> 0.9948, the cut between leak and spleen taking
    about 0.4 % of the spleen with it; forced 0.9917. Radius limit 3: 0.9950; no radius limit:
    0.9865, the clicks take spleen with the leak. With the paper's cut: 94 % removed,
    0.992 -> 0.9995). A 15 mm leak loses only 12 % to two clicks: the repaired IF-GC's reach
    is a click's depth in its error region (docs/experiments.md)."""
    import nibabel as nib
    from scipy import ndimage

    from lib.benchmark.protocol import robot_click

    image, reference, affine, spacing = ct_case(server, "ct", SPLEEN)
    ring = ndimage.binary_dilation(reference, iterations=4) & ~ndimage.binary_dilation(reference, iterations=3)
    centre = np.argwhere(ring)[len(np.argwhere(ring)) // 3]
    grids = np.meshgrid(*[np.arange(n) for n in reference.shape], indexing="ij")
    leak = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing)) <= 10.0**2
    start = reference | leak
    upload = tmp_path / "start.nii.gz"
    nib.save(nib.Nifti1Image(start.astype(np.uint8), affine), str(upload))
    mask, result, _ = infer(server, "midepseg_3d", "ct", [], label_in=str(upload))
    assert result["start"] == "uploaded label" and result["stage"] == 1
    assert dice(mask, start) > 0.97, "without clicks the uploaded mask is the answer"
    fg, bg = [], []
    for _ in range(2):
        point, is_fg = robot_click(mask, reference, spacing, np.asarray(fg + bg, dtype=np.int64).reshape(-1, 3))
        (fg if is_fg else bg).append(point.tolist())
        mask, result, _ = infer(server, "midepseg_3d", "ct", fg, bg, label_in=str(upload))
        assert result["stage"] == 2
    forced = start.copy()
    forced[tuple(np.asarray(fg, dtype=np.int64).reshape(-1, 3).T)] = True
    forced[tuple(np.asarray(bg, dtype=np.int64).reshape(-1, 3).T)] = False
    gained, nothing = dice(mask, reference), dice(forced, reference)
    outside = leak & ~reference
    removed = float((outside & (mask == 0)).sum() / outside.sum())
    print(f"uploaded leaking spleen: Dice {dice(start, reference):.4f}, forced clicks {nothing:.4f}, refined {gained:.4f}, "
          f"leak removed {100 * removed:.0f} %")
    assert gained > nothing + 0.002 and removed > 0.5, (gained, nothing, removed)
    assert not (reference & (mask == 0)).sum() > 0.01 * reference.sum(), "the refinement must not eat the spleen"


def test_bad_uploaded_masks_give_400(server, tmp_path):
    import nibabel as nib

    image, reference, affine, _ = ct_case(server, "ct", SPLEEN)
    before = server.label_files()
    params = {"foreground": [[int(v) for v in np.argwhere(reference)[0]]], "background": []}
    cases = {"not an image": ("x.nii.gz", b"this is not an image")}
    for name, array in (("other shape", np.ones((5, 5, 5), np.uint8)), ("not binary", (reference * 2).astype(np.uint8))):
        path = tmp_path / f"{name.replace(' ', '_')}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        cases[name] = (path.name, path.read_bytes())
    expected = {"not an image": "not a readable image", "other shape": "shape", "not binary": "binary"}
    for name, (filename, content) in cases.items():
        response = _post_with_label(server, "midepseg_3d", "ct", params, filename, content)
        assert response.status_code == 400, (name, response.status_code, response.text[:300])
        assert "label" in response.text and expected[name] in response.text, (name, response.text[:300])
    assert server.label_files() == before, "a bad upload must not touch stored labels"
    assert server.client.info()["models"], "the server keeps serving"
