"""Two app replicas behind nginx over one DICOMweb PACS and one model folder (issue 12): the
same request gives the same mask from either replica and through the proxy; a label saved
through one replica is in the other's training data, and the weights its ``/train``
publishes answer the next request on both.

Skipped, with the reason, only when Orthanc or nginx (Debian packages, installed by
``.ci/run``) are missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from lib.dicomweb.orthanc import OrthancServer, orthanc_missing
from lib.dicomweb.series import write_ct_series
from lib.dicomweb.stack import SAMPLE_CT
from lib.processes import group_alive
from lib.replicas import nginx_missing, replica_set
from tests.test_server_e2e import load

MISSING = orthanc_missing() or nginx_missing()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"replica test: {MISSING}")

# How long a replica keeps the PACS's list of labelled series (MONAI Label's DICOMweb cache
# expiry, default 180 s); short here so that the test sees another replica's label soon.
LIST_EXPIRY_S = 2


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    work = tmp_path_factory.mktemp("replicas")
    geometry = write_ct_series(SAMPLE_CT, work / "dicom")
    with OrthancServer(work / "orthanc") as pacs:
        pacs.upload(geometry.files)
        with replica_set(pacs.dicomweb_url, 2, work / "models", work / "servers",
                         env={"MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": str(LIST_EXPIRY_S)}) as running:
            yield running, geometry.series_uid, work
    for replica in running.replicas:
        assert not group_alive(replica.proc.pid), f"replica {replica.url} outlived the test"
    assert running.proxy.proc is None


def _client(url: str, work: Path):
    from monailabel.client import MONAILabelClient

    folder = work / "client"
    folder.mkdir(exist_ok=True)
    return MONAILabelClient(url, tmpdir=str(folder))


def _infer(url: str, work: Path, series: str, points, keep: Path | None = None) -> tuple[np.ndarray, dict]:
    """The mask and result JSON of one 3D request; the returned label file moves to ``keep``."""
    params = {"foreground": points, "background": [], "result_extension": ".nii.gz", "result_dtype": "uint8"}
    path, result = _client(url, work).infer("midepseg_3d", series, params)
    try:
        mask = load(path)
    finally:
        os.replace(path, keep) if keep else os.unlink(path)
    return mask, result


def _margin_points(url: str, work: Path, series: str) -> list[list[int]]:
    """Six points around the served volume's centre (the series as the replicas see it)."""
    import requests

    image = requests.get(f"{url}/datastore/image", params={"image": series}, timeout=120)
    assert image.status_code == 200, image.text[:200]
    (work / "series.nii.gz").write_bytes(image.content)
    centre = np.asarray(load(work / "series.nii.gz").shape) // 2
    return [(centre + d * np.eye(3, dtype=int)[axis] * 6).tolist() for axis in range(3) for d in (-1, 1)]


def test_either_replica_and_the_proxy_give_the_same_mask(replicas):
    running, series, work = replicas
    points = _margin_points(running.url, work, series)
    answers = [_infer(url, work, series, points) for url in [r.url for r in running.replicas] + [running.url]]
    first_mask, first_result = answers[0]
    assert first_mask.sum() > 100, first_result
    for mask, result in answers[1:]:
        np.testing.assert_array_equal(mask, first_mask)
        assert result["weights"] == first_result["weights"] != ""


def test_a_label_saved_through_one_replica_trains_on_the_other_and_its_weights_reach_both(replicas):
    running, series, work = replicas
    a, b = (r.url for r in running.replicas)
    points = _margin_points(a, work, series)
    label = work / "label.nii.gz"
    _, before = _infer(a, work, series, points, keep=label)
    assert _client(b, work).next_sample("first", {}).get("id") == series  # not labelled yet

    saved = _client(a, work).save_label(series, str(label), tag="final")
    assert saved, saved
    time.sleep(LIST_EXPIRY_S + 1)
    assert _client(b, work).next_sample("first", {}).get("id") != series  # B sees A's label in the PACS

    # B trains (one epoch on its datalist: the SEG A stored, fetched from the PACS) and
    # publishes into the shared model folder.
    request = {"max_epochs": 1, "val_split": 0.0, "train_batch_size": 1, "dataset": "Dataset", "pretrained": True}
    started = _client(b, work).train_start("midepseg_3d", request)
    assert started["status"] in ("SUBMITTED", "RUNNING", "QUEUED"), started
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _client(b, work).train_status()
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", status
    assert "Records for Training: 1" in running.replicas[1].log.read_text(errors="replace")

    after = [_infer(url, work, series, points)[1] for url in (a, b)]
    assert after[0]["weights"] == after[1]["weights"] != before["weights"], (before, after)
