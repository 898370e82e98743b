#!/usr/bin/env python
"""Serve one PACS with several MIDeepSeg replicas behind nginx, on this machine (issue 12).

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python scripts/serve_replicas.py \\
        --studies http://127.0.0.1:8042/dicom-web --replicas 2 --model-dir /srv/midepseg/models --port 8000

Clients (Slicer, OHIF) connect to ``http://127.0.0.1:<port>``; each replica listens on a
free loopback port of its own, with its own DICOMweb cache under ``--work-dir``; all share
``--model-dir`` (the shipped weights are copied there once; ``/train`` publishes there).
``--conf KEY VALUE`` goes to every replica. Runs until interrupted (Ctrl-C, SIGTERM), then
stops nginx and the replicas.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.replicas import replica_set  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", required=True, help="the PACS's DICOMweb URL")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, required=True, help="weights shared by the replicas")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "replicas", help="logs, caches, nginx files")
    parser.add_argument("--port", type=int, default=8000, help="the proxy's loopback port")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with replica_set(args.studies, args.replicas, args.model_dir, args.work_dir, dict(args.conf), args.port) as running:
        logging.info("serving %s through %s: replicas %s (logs under %s)", args.studies, running.url,
                     ", ".join(r.url for r in running.replicas), args.work_dir)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
