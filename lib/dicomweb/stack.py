"""The OHIF session's back end in one context manager: the sample CT as a DICOM series in a
fresh Orthanc, and the MIDeepSeg app serving it over DICOMweb (both on loopback ports, both
stopped with everything they started on exit)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterator

from lib.app_server import APP_DIR, start_app_server
from lib.dicomweb.orthanc import OrthancServer
from lib.dicomweb.series import SeriesGeometry, write_ct_series
from lib.processes import free_port, stop_group

logger = logging.getLogger(__name__)

SAMPLE_CT = APP_DIR / "sample_study" / "abdomen_ct.nii.gz"
SAMPLE_SPLEEN = APP_DIR / "sample_references" / "abdomen_ct.nii.gz"


@dataclasses.dataclass
class OhifStack:
    pacs: OrthancServer
    pacs_pgid: int
    geometry: SeriesGeometry
    app_url: str
    app_log: Path
    app_pgid: int
    timings: dict[str, float]

    @property
    def viewer_url(self) -> str:
        """The bundled OHIF viewer with the MONAI Label mode on the sample study."""
        return f"{self.app_url}/ohif/monai-label?StudyInstanceUIDs={self.geometry.study_uid}"


@contextlib.contextmanager
def ohif_stack(
    work_dir: str | Path, nifti: str | Path = SAMPLE_CT, app_port: int | None = None, pacs_port: int | None = None
) -> Iterator[OhifStack]:
    """Write ``nifti`` as a DICOM CT series, load it into a new Orthanc and start the app with
    ``--studies <orthanc>/dicom-web`` (DICOMweb cache under ``work_dir``; free ports unless given)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    geometry = write_ct_series(nifti, work / "dicom")
    geometry.save(work / "geometry.json")
    timings["dicom_write"] = time.perf_counter() - start
    with OrthancServer(work / "orthanc", pacs_port) as pacs:
        timings["orthanc_start"] = pacs.startup_s
        start = time.perf_counter()
        pacs.upload(geometry.files)
        timings["upload"] = time.perf_counter() - start
        port = app_port or free_port()
        log = work / "server.log"
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "dicomweb_cache")}
        proc, timings["app_start"] = start_app_server(pacs.dicomweb_url, port, log, env=env)
        logger.info("MIDeepSeg app up in %.1f s on http://127.0.0.1:%d (log %s)", timings["app_start"], port, log)
        try:
            yield OhifStack(pacs, pacs.proc.pid, geometry, f"http://127.0.0.1:{port}", log, proc.pid, timings)
        finally:
            stop_group(proc)
