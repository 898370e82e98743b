"""Child processes that must not outlive their caller: free loopback ports, process groups,
waiting for an HTTP service to answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(cmd: Sequence[str], log: str | Path, env: dict | None = None, cwd: str | Path | None = None):
    """Start ``cmd`` in a new session (its own process group), stdout+stderr to ``log``."""
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(proc: subprocess.Popen, term_wait: float = 20.0) -> None:
    """SIGTERM, then SIGKILL, the process group of ``proc`` (``proc`` and everything it started)."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing else in its group is left
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    proc.poll()


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def log_tail(log: str | Path, n: int = 4000) -> str:
    path = Path(log)
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: str | Path) -> float:
    """Seconds until ``url`` answers 200; ``RuntimeError`` (with the log's tail) when ``proc``
    exits first or ``timeout`` passes."""
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} during start-up:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, OSError):
            pass
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log_tail(log)}")
        time.sleep(0.5)


class ChildService:
    """A server run as a child process group: ``start()`` (subclasses) sets ``proc``;
    ``stop()`` ends the group; as a context manager it starts and always stops."""

    proc: subprocess.Popen | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
