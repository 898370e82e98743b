"""Start the MIDeepSeg MONAI Label server as a child process group on a loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lib.processes import start_group, stop_group, wait_http

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "midepseg"
STARTUP_TIMEOUT_S = 240


def start_app_server(
    studies: str | Path,
    port: int,
    log: str | Path,
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    host: str = "127.0.0.1",
) -> tuple[subprocess.Popen, float]:
    """``monailabel start_server`` for the app on ``host:port`` (default loopback) with
    ``--studies studies`` (a folder or a DICOMweb URL) and ``--conf`` pairs; returns the
    process (its own process group) and the seconds until ``/info/`` answered on loopback.
    ``RuntimeError`` when it does not start."""
    full_env = dict(os.environ, **(env or {}))
    # MONAI Label's training subprocess reads PYTHONPATH (the `monailabel` script sets it).
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), full_env.get("PATH", "")))
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(APP_DIR), "--studies", str(studies),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    for key, value in (conf or {}).items():
        cmd += ["--conf", key, str(value)]
    proc = start_group(cmd, log, env=full_env, cwd=REPO_ROOT)
    try:
        seconds = wait_http(f"http://127.0.0.1:{port}/info/", proc, timeout, log)
    except RuntimeError:
        stop_group(proc)
        raise
    return proc, seconds
