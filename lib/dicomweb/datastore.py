"""MONAI Label's DICOMweb datastore, offline: final labels go back to the PACS as DICOM SEG
written by pydicom-seg instead of dcmqi's downloaded ``itkimage2segimage``."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from dicomweb_client.session_utils import create_session_from_user_pass
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException

from lib.dicomweb.seg import write_dicom_seg
from lib.edge.labels import SafeLabels
from lib.transforms.validation import InvalidInputError

logger = logging.getLogger(__name__)

# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1). Series ids name cache folders.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SegDICOMWebDatastore(SafeLabels, DICOMWebDatastore):
    """Series from a DICOMweb server (converted to NIfTI and cached, as upstream); a label
    saved with tag ``final`` is stored as DICOM SEG on the server (STOW-RS) and in the local
    cache, other tags only in the cache. OHIF's raw ``label.bin`` uploads are accepted. A
    label is checked against its series before anything is stored (:class:`SafeLabels`)."""

    def get_image_uri(self, image_id: str) -> str:
        """The cached NIfTI of series ``image_id`` (fetched on first use); "" for an id that is
        not a DICOM UID or a series the DICOMweb server does not have (upstream raises
        IndexError, answered as HTTP 500, and joins any id into a cache path)."""
        if not isinstance(image_id, str) or len(image_id) > 64 or not UID_PATTERN.match(image_id):
            return ""
        cached = os.path.isdir(os.path.join(self._datastore.image_path(), image_id))
        if not cached and not self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id}):
            return ""
        return super().get_image_uri(image_id)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise ImageNotFoundException(f"Image {image_id} not found")
        converted = self._from_binary(image_uri, label_filename) if label_filename.endswith(".bin") else ""
        label_file = converted or label_filename
        label_info = dict(label_info or {})
        try:
            self.check_label(image_id, label_file, label_tag)  # before anything reaches the PACS
            if label_tag == DefaultLabelTag.FINAL:
                label_info.update(self._store_seg(image_id, label_file, label_info.get("label_info")))
            return self.write_label(image_id, label_file, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)

    @staticmethod
    def _from_binary(image_uri: str, label_filename: str) -> str:
        """OHIF's raw voxel upload as an image file of the series' geometry."""
        try:
            return binary_to_image(image_uri, label_filename)
        except MemoryError:
            raise
        except Exception as e:  # bytes that do not fill the series' voxel grid
            raise InvalidInputError(f"label: the .bin upload does not fit the series ({type(e).__name__})") from None

    def _store_seg(self, image_id: str, label_file: str, segments) -> dict[str, Any]:
        series_dir = os.path.join(self._datastore.image_path(), image_id)
        try:
            seg_file = write_dicom_seg(label_file, series_dir, segments)
        except ValueError as e:
            raise InvalidInputError(f"cannot save the label of {image_id} as DICOM SEG: {e}") from e
        try:
            seg_series = dicom_web_upload_dcm(seg_file, self._client)
        finally:
            os.unlink(seg_file)
        if not seg_series:
            raise HTTPException(status_code=502, detail="the DICOMweb server did not store the DICOM SEG")
        # upstream caches the QIDO answer "which series have a SEG" for hours: forget it, so
        # that active learning sees the new label at once
        DICOMWebDatastore.get_labeled_images.cache_clear()
        image_info = self.get_image_info(image_id)
        logger.info("label of %s stored as DICOM SEG series %s", image_id, seg_series)
        return {
            "SeriesInstanceUID": seg_series,
            "Modality": image_info.get("Modality"),
            "PatientID": image_info.get("PatientID"),
            "StudyInstanceUID": image_info.get("StudyInstanceUID"),
        }


def dicomweb_datastore(url: str) -> SegDICOMWebDatastore:
    """The datastore for ``--studies http(s)://.../dicom-web``, configured by MONAI Label's
    ``MONAI_LABEL_DICOMWEB_*`` / ``MONAI_LABEL_{QIDO,WADO,STOW}_PREFIX`` settings (Google
    Cloud's credential flow is not supported)."""
    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session = create_session_from_user_pass(
            settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
        )
    client = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return SegDICOMWebDatastore(
        client=client,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=cache_path or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
    )
