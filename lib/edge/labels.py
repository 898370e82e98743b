"""Stored labels are never lost: an upload is checked before anything is written, and every
write is a temporary file renamed over the old one (a crash leaves the old file or the new
one, never a mix).

:class:`SafeLabels` gives a MONAI Label ``LocalDatastore`` (or a subclass, such as the
DICOMweb datastore's local cache) that behaviour; :class:`SafeLocalDatastore` is the
studies-folder datastore with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException

from lib.infers.image_cache import SHARED_LOADER
from lib.transforms.validation import InvalidInputError, read_upload

logger = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".png")


def check_label_tag(tag: str) -> str:
    """A tag names a folder under ``labels/``: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
        raise InvalidInputError(f"tag: expected 1-64 letters, digits, '_' or '-', got {tag!r}")
    return tag


def label_extension(filename: str) -> str:
    """The upload's extension, one of :data:`LABEL_EXTENSIONS`."""
    name = os.path.basename(filename).lower()
    for ext in sorted(LABEL_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise InvalidInputError(f"label: the file name must end in one of {LABEL_EXTENSIONS}, got {os.path.basename(filename)!r}")


def check_label_file(label_path: str, image_path: str) -> None:
    """Check an uploaded label against its image before it is stored.

    The label must be readable by MONAI's ``LoadImage``, have the image's spatial shape as
    the server loads it (:data:`lib.infers.image_cache.SHARED_LOADER`, cached: a colour 2D
    image has two axes; singleton axes of the label are dropped) and hold finite
    non-negative integer values (class indices).

    Raises:
        InvalidInputError: naming the problem.
    """
    label = read_upload(label_path, "label")
    image_shape = tuple(int(s) for s in SHARED_LOADER.load(image_path)[0].shape[1:])
    if tuple(np.squeeze(label).shape) != tuple(s for s in image_shape if s != 1):
        raise InvalidInputError(f"label: the uploaded label has shape {label.shape}, the image {image_shape}")
    if not np.issubdtype(label.dtype, np.number) or not np.all(np.isfinite(label)):
        raise InvalidInputError("label: values must be finite numbers")
    if label.size and (label.min() < 0 or np.any(label != np.round(label))):
        raise InvalidInputError("label: values must be non-negative integers (class indices)")


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in the same folder and a rename."""
    tmp = f"{dst}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class SafeLabels:
    """For a ``LocalDatastore`` subclass: ``save_label`` checks the upload
    (:func:`check_label_file`, :func:`check_label_tag`) before anything is written and writes
    the label file and the datastore index atomically (:func:`atomic_copy`)."""

    def check_label(self, image_id: str, label_filename: str, label_tag: str) -> None:
        """Everything :meth:`save_label` checks, without writing (``InvalidInputError``,
        ``ImageNotFoundException``)."""
        check_label_tag(label_tag)
        label_extension(label_filename)
        image_uri = self.get_image_uri(image_id) if self._datastore.objects.get(image_id) else ""
        if not image_uri or not os.path.exists(image_uri):
            raise ImageNotFoundException(f"Image {image_id} not found")
        check_label_file(label_filename, image_uri)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self.check_label(image_id, label_filename, label_tag)
        return self.write_label(image_id, label_filename, label_tag, label_info)

    def write_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label :meth:`check_label` accepted: the file, then the index, each atomically."""
        obj = self._datastore.objects[image_id]
        ext = label_extension(label_filename)
        folder = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ext)
        with FileLock(self._lock_file):
            os.makedirs(folder, exist_ok=True)
            atomic_copy(label_filename, os.path.join(folder, name))
            info = dict(label_info or {}, ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("label of %s saved as %s/%s", image_id, label_tag, name)
        return image_id

    def _update_datastore_file(self, lock: bool = True) -> None:
        """The datastore index, written to a temporary file and renamed over the old one."""

        def write() -> None:
            self._ignore_event_config = True
            tmp = f"{self._datastore_config_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str))
            os.replace(tmp, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


class SafeLocalDatastore(SafeLabels, LocalDatastore):
    """MONAI Label's studies-folder datastore whose labels are checked and written atomically."""
