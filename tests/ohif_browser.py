"""Client for ``tests/browser/ohif_driver.mjs`` (OHIF in headless Chromium) and the checks
the OHIF browser test applies to what comes back."""

from __future__ import annotations

import ast
import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from lib.processes import stop_group

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
DRIVER = BROWSER_DIR / "ohif_driver.mjs"
CHROMIUM = "/usr/bin/chromium"
COMMAND_TIMEOUT_S = 180


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (Debian package 'chromium')"
    if not shutil.which("node"):
        return "node is not installed"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed (run `npm ci` in {BROWSER_DIR})"
    return None


class BrowserError(RuntimeError):
    """A driver command failed (the message carries the driver's error)."""


class OhifBrowser:
    """``with OhifBrowser(work_dir) as b: b("open", url=..., server=...)``: one node driver
    process (own process group) and one Chromium with a fresh profile under ``work_dir``."""

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)
        self.profile = self.work_dir / "chromium-profile"
        self.log = self.work_dir / "driver.log"
        self.proc: subprocess.Popen | None = None
        self._answers: queue.Queue = queue.Queue()

    def __enter__(self) -> "OhifBrowser":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CHROMIUM=CHROMIUM)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["node", str(DRIVER)], cwd=BROWSER_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True, text=True, bufsize=1,
            )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def __call__(self, cmd: str, timeout: float = COMMAND_TIMEOUT_S, **args) -> dict:
        if cmd == "open":
            args.setdefault("userDataDir", str(self.profile))
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{cmd}: no answer within {timeout:.0f} s") from None
        if line is None:
            raise BrowserError(f"{cmd}: the driver exited ({self.log.read_text(errors='replace')[-2000:]})")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise BrowserError(f"{cmd}: {answer['error']}")
        return answer

    def chromium_pids(self) -> list[int]:
        """Processes still running with this session's Chromium profile."""
        pids = []
        for proc_dir in Path("/proc").iterdir():
            if proc_dir.name.isdigit():
                try:
                    cmdline = (proc_dir / "cmdline").read_bytes()
                except OSError:
                    continue
                if str(self.profile).encode() in cmdline:
                    pids.append(int(proc_dir.name))
        return pids

    def __exit__(self, *exc) -> None:
        try:
            self("quit", timeout=30)
        except (BrowserError, OSError, ValueError):
            pass
        stop_group(self.proc, term_wait=10)
        # Playwright starts Chromium in a process group of its own; end any it left behind.
        deadline = time.monotonic() + 10
        while self.chromium_pids() and time.monotonic() < deadline:
            for pid in self.chromium_pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


def decode_labelmap(answer: dict) -> np.ndarray:
    """The viewer's labelmap (``segment`` answer) as a ``(columns, rows, slices)`` array."""
    data = np.frombuffer(base64.b64decode(answer["data"]), dtype=np.uint8)
    return data.reshape(answer["dimensions"], order="F")


def logged_infer_requests(server_log: str | Path, final: bool = False) -> list[dict]:
    """The infer requests a MONAI Label server logged, parsed: as received (``Infer Request:``)
    or, with ``final``, after the task's defaults were merged in (``Infer Request (final):``)."""
    marker = "Infer Request (final): " if final else "Infer Request: "
    lines = Path(server_log).read_text(errors="replace").splitlines()
    return [ast.literal_eval(line[line.index(marker) + len(marker) :]) for line in lines if marker + "{" in line]


def read_nrrd(data: bytes, work_dir: str | Path) -> np.ndarray:
    """An NRRD file's voxels (pynrrd, axes as stored: (column, row, slice) for the server's answers)."""
    import nrrd

    path = Path(work_dir) / "answer.nrrd"
    path.write_bytes(data)
    return nrrd.read(str(path))[0]


def read_seg_on_series(path: str | Path, geometry) -> np.ndarray:
    """The first segment of a DICOM SEG file (pydicom-seg's reader) on the series' (column,
    row, slice) grid: each frame goes to the series slice at its patient position."""
    import pydicom
    import pydicom_seg
    import SimpleITK as sitk

    result = pydicom_seg.SegmentReader().read(pydicom.dcmread(str(path)))
    image = result.segment_image(sorted(result.available_segments)[0])
    frames = sitk.GetArrayFromImage(image).transpose(2, 1, 0) > 0  # (column, row, frame)
    if frames.shape[:2] != tuple(geometry.shape[:2]):
        raise AssertionError(f"SEG frames are {frames.shape[:2]}, the series' slices {geometry.shape[:2]}")
    mask = np.zeros(geometry.shape, dtype=bool)
    for frame in range(frames.shape[2]):
        column, row, slice_ = geometry.to_index(image.TransformIndexToPhysicalPoint((0, 0, frame)))[0]
        if (column, row) != (0, 0):
            raise AssertionError(f"SEG frame {frame} does not start at the series' first voxel")
        mask[:, :, slice_] |= frames[:, :, frame]
    return mask


def non_loopback_address() -> str | None:
    """An address of this machine that is not on the loopback interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def check_clicks(request: dict, foreground, background, reference: np.ndarray) -> None:
    """The request OHIF sent carries exactly the intended voxels (``(column, row, slice)`` of
    the series), foreground inside and background outside ``reference``."""
    sent_fg = np.asarray(request.get("foreground", []), dtype=np.int64).reshape(-1, 3)
    sent_bg = np.asarray(request.get("background", []), dtype=np.int64).reshape(-1, 3)
    want_fg = np.asarray(foreground, dtype=np.int64).reshape(-1, 3)
    want_bg = np.asarray(background, dtype=np.int64).reshape(-1, 3)
    if sent_fg.shape != want_fg.shape or not np.array_equal(sent_fg, want_fg):
        raise AssertionError(f"foreground clicks landed on {sent_fg.tolist()}, intended {want_fg.tolist()}")
    if sent_bg.shape != want_bg.shape or not np.array_equal(sent_bg, want_bg):
        raise AssertionError(f"background clicks landed on {sent_bg.tolist()}, intended {want_bg.tolist()}")
    if not all(reference[tuple(p)] for p in sent_fg):
        raise AssertionError("a foreground click is outside the reference object")
    if any(reference[tuple(p)] for p in sent_bg):
        raise AssertionError("a background click is inside the reference object")


def check_mask(mask: np.ndarray, reference: np.ndarray, min_dice: float) -> float:
    """Dice of a non-empty ``mask`` against ``reference`` (same grid), at least ``min_dice``."""
    from lib.metrics import dice

    if mask.shape != reference.shape:
        raise AssertionError(f"mask shape {mask.shape} differs from the series' {reference.shape}")
    if not mask.any():
        raise AssertionError("the mask is empty")
    value = dice(mask, reference)
    if value < min_dice:
        raise AssertionError(f"Dice {value:.3f} is below {min_dice}")
    return value
