"""Start a PACS (Orthanc + DICOMweb) with the sample CT as a DICOM series and the MIDeepSeg
app on it, print the OHIF address, and serve until Ctrl-C (which stops both).

    .venv/bin/python scripts/ohif_demo.py [--work runs/ohif_demo] [--port 8000] [--orthanc-port 8042]
(``bash scripts/run_ohif_demo.sh`` sets up the venv and the Debian packages first.)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.dicomweb.stack import ohif_stack  # noqa: E402

MARKER = ".midepseg-ohif-demo"  # in a work folder this demo made, and may therefore empty


def fresh_work_dir(path: Path) -> None:
    """Empty ``path`` for a fresh PACS and cache, but only a folder this demo made (or an
    empty or missing one): any other folder is left alone and the demo stops, naming it."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SystemExit(f"--work {path} is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise SystemExit(f"--work {path} holds files this demo did not make; give a new or empty folder")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / MARKER).touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ohif_demo", help="fresh folder for PACS, cache, logs")
    parser.add_argument("--port", type=int, default=8000, help="MONAI Label server port (127.0.0.1)")
    parser.add_argument("--orthanc-port", type=int, default=8042, help="Orthanc HTTP/DICOMweb port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fresh_work_dir(args.work)  # a fresh PACS and cache every time
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C, `kill`, closed terminal
        signal.signal(sig, lambda *_: sys.exit(0))  # unwinds the `with`, which stops both servers
    with ohif_stack(args.work, app_port=args.port, pacs_port=args.orthanc_port) as stack:
        print(
            f"\nOrthanc (DICOMweb): {stack.pacs.dicomweb_url}   (Orthanc log {stack.pacs.log})\n"
            f"MONAI Label:        {stack.app_url}   (log {stack.app_log})\n"
            f"Study:              {stack.geometry.study_uid}\n\n"
            f"Open in Chromium/Chrome:\n  {stack.viewer_url}\n\nCtrl-C stops both servers.",
            flush=True,
        )
        signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
