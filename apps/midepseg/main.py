"""MONAI Label app serving MIDeepSeg (2D and 3D) to 3D Slicer and OHIF.

    monailabel start_server --app apps/midepseg --studies <folder> --host 127.0.0.1
    monailabel start_server --app apps/midepseg --studies http://127.0.0.1:8042/dicom-web --host 127.0.0.1

With a DICOMweb ``--studies`` URL the app starts offline (no dcmqi download) and saves final
labels back to the PACS as DICOM SEG written by pydicom-seg (``lib.dicomweb.datastore``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.utils.others.generic import device_map  # noqa: E402

from configs.midepseg import MIDeepSeg2DConfig, MIDeepSeg3DConfig, MIDeepSegConfig  # noqa: E402
from lib.dicomweb.datastore import dicomweb_datastore  # noqa: E402
from lib.infers.image_cache import SHARED_LOADER  # noqa: E402
from lib.infers.midepseg_infer import warm_up_label_writer  # noqa: E402

logger = logging.getLogger(__name__)

MODELS: dict[str, type[MIDeepSegConfig]] = {"midepseg_2d": MIDeepSeg2DConfig, "midepseg_3d": MIDeepSeg3DConfig}


class MIDeepSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        shipped = os.path.join(app_dir, "model")
        # `--conf model_dir DIR` keeps weights (and what /train publishes) outside the repo;
        # the shipped weights are copied there once.
        self.model_dir = conf.get("model_dir", shipped)
        if os.path.realpath(self.model_dir) != os.path.realpath(shipped):
            os.makedirs(self.model_dir, exist_ok=True)
            for name in (f"{model}{suffix}" for model in MODELS for suffix in ("", "_refine")):
                src, dst = os.path.join(shipped, f"{name}.pt"), os.path.join(self.model_dir, f"{name}.pt")
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
        warm_up_label_writer()
        for device in set(device_map().values()):
            for task in self._infers.values():
                task.warm_up(device)

    def _init_dicomweb_datastore(self) -> Datastore:
        """DICOMweb studies without dcmqi: upstream downloads ``itkimage2segimage`` here (and
        fails offline); this datastore writes DICOM SEG with pydicom-seg instead."""
        logger.info("Using DICOMweb: %s (DICOM SEG written by pydicom-seg)", self.studies)
        return dicomweb_datastore(self.studies)

    def init_infers(self):
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self):
        return {name: config.trainer() for name, config in self.models.items()}

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
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"unknown image '{image}' (not in the datastore)")
        if request.get("model") not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model '{request.get('model')}'")
        return super().infer(request, datastore)
