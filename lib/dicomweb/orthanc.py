"""Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) as a throw-away PACS.

Runs ``Orthanc <config>`` directly (no service manager) with storage in ``work_dir``, the
DICOM (DIMSE) server off, only the DICOMweb plugin loaded and ``RemoteAccessAllowed``
false. Orthanc 1.10 has no bind-address option: its HTTP socket listens on all interfaces,
but it serves only clients on the loopback interface (any other address gets 401).
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.request
from pathlib import Path
from typing import Iterable

from lib.processes import ChildService, free_port, start_group, wait_http

logger = logging.getLogger(__name__)

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STARTUP_TIMEOUT_S = 60


def orthanc_missing() -> str | None:
    """Why Orthanc with DICOMweb cannot run here, or ``None`` when it can."""
    if not shutil.which("Orthanc"):
        return "the Orthanc executable is not installed (Debian package 'orthanc')"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"{DICOMWEB_PLUGIN} is missing (Debian package 'orthanc-dicomweb')"
    return None


class OrthancServer(ChildService):
    """``with OrthancServer(work_dir) as pacs: pacs.upload(files); pacs.dicomweb_url``"""

    def __init__(self, work_dir: str | Path, port: int | None = None) -> None:
        missing = orthanc_missing()
        if missing:
            raise RuntimeError(missing)
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.log = self.work_dir / "orthanc.log"
        self.proc = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        storage = str(self.work_dir / "storage")
        return {
            "Name": "MIDeepSegPACS",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def start(self) -> None:
        """Start Orthanc and wait until it answers (``startup_s``: how long that took)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        self.proc = start_group(["Orthanc", str(config)], self.log)
        try:
            self.startup_s = wait_http(f"{self.url}/system", self.proc, STARTUP_TIMEOUT_S, self.log)
        except RuntimeError:
            self.stop()
            raise
        logger.info("Orthanc up in %.1f s at %s (log %s)", self.startup_s, self.url, self.log)

    def upload(self, files: Iterable[str | Path]) -> list[str]:
        """POST each DICOM file to ``/instances``; returns Orthanc's instance ids."""
        ids = []
        for path in files:
            request = urllib.request.Request(f"{self.url}/instances", data=Path(path).read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc refused {path}: {answer}")
            ids.append(answer["ID"])
        return ids

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` of Orthanc's REST API."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.get_bytes(path))
