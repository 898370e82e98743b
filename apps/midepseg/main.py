"""MONAI Label app serving MIDeepSeg (2D and 3D) to 3D Slicer and OHIF.

    monailabel start_server --app apps/midepseg --studies <folder> --host 127.0.0.1
    monailabel start_server --app apps/midepseg --studies http://127.0.0.1:8042/dicom-web --host 127.0.0.1

With a DICOMweb ``--studies`` URL the app starts offline (no dcmqi download) and saves final
labels back to the PACS as DICOM SEG written by pydicom-seg (``lib.dicomweb.datastore``).

The app's edge (``lib.edge``): it refuses to listen beyond loopback without authentication,
checks every request before it runs (who sends it, its parameters, its uploads), runs
MONAI Label's blocking endpoints off the event loop, and never writes a label it has not
checked (README, "Security").
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.utils.others.generic import device_map  # noqa: E402

from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig, MIDeepSegConfig, ensemble_names  # noqa: E402
from lib.dicomweb.datastore import dicomweb_datastore  # noqa: E402
from lib.edge.errors import ServerBusy, UnknownResource  # noqa: E402
from lib.edge.exposure import ExposurePolicy, check_listen_host, listen_host  # noqa: E402
from lib.edge.labels import SafeLocalDatastore  # noqa: E402
from lib.edge.params import checked_infer_params  # noqa: E402
from lib.edge.routes import install_edge  # noqa: E402
from lib.infers.image_cache import SHARED_LOADER  # noqa: E402
from lib.infers.midepseg_infer import warm_up_label_writer  # noqa: E402

logger = logging.getLogger(__name__)

# Set by MONAI Label's endpoint from the URL and the uploads, never taken from ``params``.
SERVER_KEYS = ("model", "image", "label", "session")

MODELS: dict[str, type[MIDeepSegConfig]] = {"midepseg_2d": MIDeepSeg2DConfig, "midepseg_3d": MIDeepSeg3DConfig}
# Inference requests in progress or waiting at once (``--conf max_queued_requests``); more are
# answered 503 with Retry-After instead of piling up threads.
MAX_QUEUED_REQUESTS = 16


class MIDeepSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        # First of all, before any model loads: refuse to listen beyond loopback unauthenticated.
        self.exposure = ExposurePolicy.configure(
            conf, os.environ, settings.MONAI_LABEL_AUTH_ENABLE, settings.MONAI_LABEL_CORS_ORIGINS
        )
        check_listen_host(listen_host(sys.argv), self.exposure)
        self._admission = threading.BoundedSemaphore(int(conf.get("max_queued_requests", MAX_QUEUED_REQUESTS)))
        shipped = os.path.join(app_dir, "model")
        # `--conf model_dir DIR` keeps weights (and what /train publishes) outside the repo;
        # the shipped weights are copied there once.
        self.model_dir = conf.get("model_dir", shipped)
        if os.path.realpath(self.model_dir) != os.path.realpath(shipped):
            os.makedirs(self.model_dir, exist_ok=True)
            members = [n for c in MODELS.values() for n in ensemble_names(c.stage1_ensemble)]
            for file in [f"{model}{suffix}.pt" for model in MODELS for suffix in ("", "_refine")] + members:
                src, dst = os.path.join(shipped, file), os.path.join(self.model_dir, file)
                if os.path.exists(src) and not os.path.exists(dst):
                    # temp file + rename: a start killed mid-copy never leaves a truncated model
                    tmp = f"{dst}.{os.getpid()}.tmp"
                    shutil.copy2(src, tmp)
                    os.replace(tmp, dst)
        self.models: dict[str, MIDeepSegConfig] = {}
        for name, config_class in MODELS.items():
            config = config_class()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MIDeepSeg",
            description="Minimally interactive segmentation of seen and unseen objects (interior margin points + clicks)",
            version="0.1.0",
        )

    def on_init_complete(self):
        super().on_init_complete()
        if self._server_mode:
            from monailabel.app import app as api  # the FastAPI app serving this instance

            install_edge(api, self.exposure)
        warm_up_label_writer()
        for device in set(device_map().values()):
            for task in self._infers.values():
                task.warm_up(device)

    def init_datastore(self) -> Datastore:
        """A studies folder: MONAI Label's local datastore, with labels checked before they are
        written and written atomically (``lib.edge.labels``); a URL: the DICOMweb datastore."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_dicomweb_datastore(self) -> Datastore:
        """DICOMweb studies without dcmqi: upstream downloads ``itkimage2segimage`` here (and
        fails offline); this datastore writes DICOM SEG with pydicom-seg instead."""
        logger.info("Using DICOMweb: %s (DICOM SEG written by pydicom-seg)", self.studies)
        return dicomweb_datastore(self.studies)

    def init_infers(self):
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self):
        """Per model its stage-1 trainer and, after it, its learned refinement's trainer where
        the refinement runs a network (``POST /train/`` runs them in this order)."""
        trainers = {}
        for name, config in self.models.items():
            trainers[name] = config.trainer()
            refinement = config.refinement_trainer()
            if refinement is not None:
                trainers[f"{name}_refine"] = refinement
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def next_sample(self, request):
        """The strategy's next image, whose loading starts now in the background: the
        annotator's first click then finds it in memory."""
        sample = super().next_sample(request)
        path = sample.get("path")
        if isinstance(path, str) and os.path.isfile(path):
            SHARED_LOADER.prefetch(path)
        return sample

    def infer(self, request, datastore=None):
        """One inference request, rebuilt from what the app accepts: the model, a datastore
        image (or a session's), the uploaded mask to start from (``label``) and the documented
        parameters (``lib.edge.params``); at most ``max_queued_requests`` at once."""
        model = request.get("model")
        task = self._infers.get(model) if isinstance(model, str) else None
        if task is None:
            raise UnknownResource(f"unknown model {model!r}; this server has {sorted(self._infers)}")
        params = {k: v for k, v in request.items() if k not in SERVER_KEYS}
        checked = {
            "model": model,
            "image": self._image_path(request.get("image"), datastore or self.datastore(), request.get("session")),
            **checked_infer_params(params, task.dimension, task.default_margin_points),
        }
        if request.get("label"):
            checked["label"] = request["label"]
        if not self._admission.acquire(blocking=False):
            raise ServerBusy("too many inference requests in progress or waiting; retry in a few seconds")
        try:
            return super().infer(checked, datastore)
        finally:
            self._admission.release()

    def _image_path(self, image, store: Datastore, session) -> str:
        """The file of datastore image ``image`` (or of the request's session): never a path a
        client names."""
        if session and isinstance(image, str) and self._sessions:
            sessions = os.path.realpath(self._sessions.store_path)
            if os.path.commonpath([sessions, os.path.realpath(image)]) == sessions:
                return image
        uri = store.get_image_uri(image) if isinstance(image, str) and image else ""
        if not uri:
            raise UnknownResource(f"unknown image {image!r} (not in the datastore)")
        return uri
