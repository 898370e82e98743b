"""An annotator's OHIF session, in a real browser, against the app on a DICOMweb PACS.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) gets the sample CT written as a DICOM
series; the app starts with ``--studies <orthanc>/dicom-web``; Debian's headless Chromium,
driven by ``tests/browser/ohif_driver.mjs`` (npm ``playwright-core``), opens the bundled
viewer at ``/ohif/monai-label?StudyInstanceUIDs=...``, connects the stock MONAI Label panel,
picks ``midepseg_3d`` in the Point Prompts tab, clicks 6 interior margin points of the
spleen (chosen from the reference label) on their axial slices, runs, adds one corrective
click chosen by the robot user from the returned mask, runs again, and sends the viewer's
labelmap back as OHIF's client does (``label.bin`` to ``/datastore/label``, tag final).

Asserts: the requests the server logged carry exactly the intended series voxels (foreground
inside the reference spleen, background outside), no ``label`` key, and the default 6 margin
points applied; the viewer painted exactly the server's NRRD answer into the ``object``
segment (voxel count); Dice against the reference >= MIN_DICE_STAGE1 after the margin
points and >= MIN_DICE after the refinement click and after a background click on the
largest false-positive region, each click's voxel carrying its label; the saved label is one
DICOM SEG in Orthanc, in the CT's frame of reference and series, equal to the viewer's mask,
and the series counts as labelled; the app and Orthanc serve loopback clients only; a
session against a server that is down fails; no process started here outlives the test.
Screenshots of every step go to ``runs/ohif_browser/`` (or $OHIF_SCREENSHOTS), with a
``summary.json`` of the measured numbers.

Skipped, with the reason, only when Orthanc, Chromium, node or playwright-core are not
installed (``scripts/setup_ohif.sh`` installs them; ``.ci/run`` calls it).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lib.app_server import APP_DIR
from lib.dicomweb.orthanc import orthanc_missing
from lib.dicomweb.series import SeriesGeometry
from lib.dicomweb.stack import SAMPLE_SPLEEN, ohif_stack
from lib.processes import free_port, group_alive
from ohif_browser import (
    BrowserError,
    OhifBrowser,
    browser_missing,
    check_clicks,
    check_mask,
    decode_labelmap,
    logged_infer_requests,
    non_loopback_address,
    read_nrrd,
    read_seg_on_series,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("OHIF_SCREENSHOTS", REPO_ROOT / "runs" / "ohif_browser"))
MODEL = "midepseg_3d"
# Dice against the reference spleen, shipped 3D weights (the spleen is an object no
# training set contained). Measured: 0.829 after the 6 margin points, 0.824 after the
# corrective click. A mask in a wrong voxel frame (flipped or transposed clicks or result)
# scores near 0; the bounds leave ~0.1 for CPU/precision jitter. One click may move Dice
# either way by a little (it fuses locally), so the refinement is checked by the clicked
# voxel's label and a bounded change, not by a rise.
MIN_DICE_STAGE1 = 0.7
MIN_DICE = 0.7
MAX_DICE_LOSS_PER_CLICK = 0.03
PAINT_TIMEOUT_S = 10


_MISSING = {"browser": browser_missing(), "stack": orthanc_missing() or browser_missing()}
needs_browser = pytest.mark.skipif(_MISSING["browser"] is not None, reason=f"OHIF browser test: {_MISSING['browser']}")
needs_stack = pytest.mark.skipif(_MISSING["stack"] is not None, reason=f"OHIF browser test: {_MISSING['stack']}")


def _world(geometry: SeriesGeometry, point) -> list[float]:
    return geometry.to_lps(point)[0].tolist()


def _run(browser: OhifBrowser, work_dir: Path) -> tuple[np.ndarray, dict, float]:
    """Press Run; ``(the viewer's labelmap, segment answer, seconds to the server's answer)``
    once the viewer shows exactly the server's answer (it paints asynchronously; fails when
    it does not within PAINT_TIMEOUT_S)."""
    ran = browser("run")
    assert ran["status"] == 200, ran
    server_mask = read_nrrd(base64.b64decode(ran["nrrd"]), work_dir) > 0
    deadline = time.monotonic() + PAINT_TIMEOUT_S
    while True:
        answer = browser("segment")
        labelmap = decode_labelmap(answer)
        if np.array_equal(labelmap > 0, server_mask) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    np.testing.assert_array_equal(labelmap > 0, server_mask, "the viewer must paint exactly the server's answer")
    return labelmap, answer, ran["elapsed_ms"] / 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("ohif")
    with ohif_stack(work) as running:
        # upstream downloads dcmqi's tools into <app>/bin at start-up (and dies offline)
        assert not list((APP_DIR / "bin").glob("itkimage2segimage*")), "the app downloaded dcmqi at start-up"
        yield running
    for name, pgid in (("MONAI Label server", running.app_pgid), ("Orthanc", running.pacs_pgid)):
        assert not group_alive(pgid), f"{name} (process group {pgid}) outlived the test"


@needs_stack
def test_ohif_session_margin_points_refinement_and_saved_seg(stack, tmp_path):
    timings = dict(stack.timings)
    geometry = stack.geometry
    reference = geometry.on_series_grid(np.asarray(nib.load(str(SAMPLE_SPLEEN)).dataobj) > 0)
    assert reference.sum() > 1000, "the sample reference must hold the spleen"
    spacing = geometry.spacing
    from lib.transforms.margin_points import extreme_margin_points
    from lib.transforms.robot_user import corrective_click

    margin = extreme_margin_points(reference, spacing)
    assert len(margin) == 6
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = iter(range(1, 100))

    def screenshot(browser, name):
        browser("screenshot", path=str(SCREENSHOTS / f"{next(shot):02d}_{name}.png"))

    session_start = time.perf_counter()
    with OhifBrowser(tmp_path / "browser") as browser:
        start = time.perf_counter()
        browser("open", url=stack.viewer_url, server=stack.app_url)
        timings["viewer_open_connect"] = time.perf_counter() - start
        screenshot(browser, "connected")
        assert browser("model", name=MODEL)["selected"] == MODEL
        browser("label", name="object")
        screenshot(browser, "point_prompts_3d")

        start = time.perf_counter()
        for point in margin:
            browser("click", world=_world(geometry, point))
        timings["margin_clicks"] = time.perf_counter() - start
        screenshot(browser, "margin_points")
        stage1, _, timings["infer_stage1"] = _run(browser, tmp_path)
        screenshot(browser, "stage1_result")
        assert stage1.shape == reference.shape
        request = logged_infer_requests(stack.app_log)[-1]
        assert request["model"] == MODEL and request["image"] == geometry.series_uid
        assert "label" not in request and "margin_points" not in request, request
        assert logged_infer_requests(stack.app_log, final=True)[-1]["margin_points"] == 6  # the default applies
        check_clicks(request, margin, [], reference)
        dice_stage1 = check_mask(stage1 > 0, reference, MIN_DICE_STAGE1)

        def click_and_run(point: np.ndarray, is_fg: bool, step: str) -> tuple[np.ndarray, int, float]:
            """Place one refinement point with the foreground (``object``) or ``background``
            tool, press Run; check the logged request and the painted segment. Returns the
            segment's mask, its voxel count and the server's answer time."""
            nonlocal foreground, background
            if is_fg:
                foreground = np.r_[foreground, point[None]]
            else:
                background = np.r_[background, point[None]]
                browser("label", name="background")
            browser("click", world=_world(geometry, point))
            browser("label", name="object")
            screenshot(browser, f"{step}_click")
            labelmap, answer, seconds = _run(browser, tmp_path)
            screenshot(browser, f"{step}_result")
            check_clicks(logged_infer_requests(stack.app_log)[-1], foreground, background, reference)
            segment = {v: k for k, v in answer["names"].items()}.get("object")
            assert segment is not None, answer["names"]
            mask = labelmap == int(segment)
            voxels = int(answer["counts"].get(str(segment), 0))
            assert voxels == int(mask.sum()) > 0
            assert mask[tuple(point)] == is_fg, f"the {step} click's voxel lacks its label"
            return mask, voxels, seconds

        foreground, background = margin, margin[:0]
        click = corrective_click(stage1 > 0, reference, spacing, margin)
        assert click is not None, "stage 1 is perfect: the refinement click tests nothing"
        point, is_fg = click
        final, voxels, timings["infer_refine"] = click_and_run(point, is_fg, "refinement")
        dice_final = check_mask(final, reference, MIN_DICE)
        assert dice_final > dice_stage1 - MAX_DICE_LOSS_PER_CLICK, f"the refinement click cost Dice: {dice_stage1:.3f} -> {dice_final:.3f}"

        # A background click on the largest false-positive region (the robot restricted to
        # over-segmentation), so that the background point tool is exercised too.
        click = corrective_click(final, final & reference, spacing, np.r_[foreground, background])
        assert click is not None and not click[1], "no false positive left: the background click tests nothing"
        bg_point = click[0]
        final, voxels, timings["infer_background"] = click_and_run(bg_point, False, "background")
        dice_background = check_mask(final, reference, MIN_DICE)
        assert dice_background > dice_final - MAX_DICE_LOSS_PER_CLICK, f"the background click cost Dice: {dice_final:.3f} -> {dice_background:.3f}"

        start = time.perf_counter()
        saved = browser("save", label_info=[{"name": "spleen", "color": [255, 0, 0]}])
        timings["save_label"] = time.perf_counter() - start
        assert saved["status"] == 200 and saved["series"] == geometry.series_uid, saved
        browser("reload")
        screenshot(browser, "study_with_saved_seg")
    timings["browser_session"] = time.perf_counter() - session_start
    assert not browser.chromium_pids(), "Chromium outlived the browser session"

    segs = [s for s in stack.pacs.get_json("/series?expand") if s["MainDicomTags"].get("Modality") == "SEG"]
    assert len(segs) == 1, f"expected one DICOM SEG series in the PACS, found {len(segs)}"
    seg_file = tmp_path / "seg.dcm"
    seg_file.write_bytes(stack.pacs.get_bytes(f"/instances/{segs[0]['Instances'][0]}/file"))
    seg = pydicom.dcmread(str(seg_file))
    assert seg.FrameOfReferenceUID == geometry.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == geometry.series_uid
    assert seg.SegmentSequence[0].SegmentLabel == "spleen"
    stored = read_seg_on_series(seg_file, geometry)
    stats = json.loads(urllib.request.urlopen(f"{stack.app_url}/datastore/?output=stats", timeout=30).read())
    assert stats["completed"] == 1, f"the labelled series is not counted as labelled: {stats}"
    np.testing.assert_array_equal(stored > 0, final)
    summary = {
        "dice_stage1": round(dice_stage1, 4),
        "dice_final": round(dice_final, 4),
        "dice_after_background_click": round(dice_background, 4),
        "background_click": bg_point.tolist(),
        "refinement_click": {"voxel": point.tolist(), "foreground": bool(is_fg)},
        "segment_voxels": voxels,
        "reference_voxels": int(reference.sum()),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    (SCREENSHOTS / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nOHIF session: {json.dumps(summary)}")


@needs_stack
def test_ports_answer_loopback_only(stack):
    """The app listens on 127.0.0.1 only; Orthanc (no bind-address option in 1.10) refuses
    every client that is not on the loopback interface."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to test from")
    app_port = int(stack.app_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((address, app_port), timeout=5).close()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{address}:{stack.pacs.port}/system", timeout=10)
    assert refused.value.code in (401, 403), refused.value.code


@needs_stack
def test_unknown_series_is_404(stack):
    import requests

    response = requests.post(
        f"{stack.app_url}/infer/{MODEL}", params={"image": "1.2.3.4"}, files={"params": (None, "{}")}, timeout=60
    )
    assert response.status_code == 404 and "1.2.3.4" in response.text, (response.status_code, response.text[:300])


@needs_browser
def test_session_fails_when_server_is_down(tmp_path):
    """Connecting the panel to a port where nothing listens must fail the session."""
    dead = f"http://127.0.0.1:{free_port()}"
    with OhifBrowser(tmp_path / "browser") as browser:
        with pytest.raises(BrowserError):
            browser("open", url=f"{dead}/ohif/monai-label?StudyInstanceUIDs=1.2.3", server=dead, timeout=120)
    assert not browser.chromium_pids()


def test_checks_reject_wrong_voxel_and_empty_mask():
    """The checks the session relies on: a click one voxel off, and an empty mask, fail."""
    reference = np.zeros((10, 10, 5), dtype=bool)
    reference[3:7, 3:7, 1:4] = True
    clicks = np.array([[3, 3, 1], [6, 6, 3]])
    check_clicks({"foreground": clicks.tolist(), "background": []}, clicks, [], reference)
    with pytest.raises(AssertionError, match="landed on"):
        check_clicks({"foreground": (clicks + [1, 0, 0]).tolist(), "background": []}, clicks, [], reference)
    with pytest.raises(AssertionError, match="outside the reference"):
        check_clicks({"foreground": [[0, 0, 0]]}, [[0, 0, 0]], [], reference)
    assert check_mask(reference, reference, 0.9) == 1.0
    with pytest.raises(AssertionError, match="empty"):
        check_mask(np.zeros_like(reference), reference, 0.9)
    with pytest.raises(AssertionError, match="below"):
        check_mask(np.roll(reference, 4, axis=0), reference, 0.9)
