"""Label image -> DICOM SEG with pydicom-seg (pure Python, offline).

MONAI Label's own path shells out to dcmqi's ``itkimage2segimage``, which it downloads from
GitHub at start-up; pydicom-seg is already a MONAI Label dependency and needs no network.
Segments are matched to the source slices by patient position, so the label must be on the
grid of the converted series (what the infer task returns and what clients send back).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk

logger = logging.getLogger(__name__)

# SNOMED CT "Anatomical structure" / "Organ": generic codes for a segment of unknown class.
CATEGORY = {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
TYPE = {"CodeValue": "113343008", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Organ"}
DEFAULT_COLOR = (255, 0, 0)


def _segment(number: int, info: dict[str, Any]) -> dict[str, Any]:
    name = str(info.get("name") or f"segment {number}")
    return {
        "labelID": number,
        "SegmentLabel": name,
        "SegmentDescription": str(info.get("description") or name),
        "SegmentAlgorithmType": "SEMIAUTOMATIC",
        "SegmentAlgorithmName": "MIDeepSeg",
        "SegmentedPropertyCategoryCodeSequence": CATEGORY,
        "SegmentedPropertyTypeCodeSequence": TYPE,
        "recommendedDisplayRGBValue": [int(c) for c in list(info.get("color") or DEFAULT_COLOR)[:3]],
    }


def segment_template(labels: Sequence[int], label_info: Sequence[dict] | None = None) -> pydicom.Dataset:
    """A pydicom-seg template for segment numbers ``labels``; ``label_info[i]`` (MONAI Label's
    ``{"name", "description", "color"}``) describes the i-th label when given."""
    infos = list(label_info or [])
    segments = [_segment(int(n), infos[i] if i < len(infos) else {}) for i, n in enumerate(labels)]
    return pydicom_seg.template.from_dcmqi_metainfo(
        {
            "ContentCreatorName": "MIDeepSeg^Annotator",
            "ClinicalTrialSeriesID": "Session1",
            "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "MIDeepSeg label",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "segmentAttributes": [segments],
            "ContentLabel": "SEGMENTATION",
            "ContentDescription": "MIDeepSeg interactive segmentation (MONAI Label)",
            "ClinicalTrialCoordinatingCenterName": "MONAI",
            "BodyPartExamined": "",
        }
    )


def write_dicom_seg(label_file: str | Path, series_dir: str | Path, label_info: Sequence[dict] | None = None) -> str:
    """Write the label image ``label_file`` as a DICOM SEG referencing the DICOM files in
    ``series_dir``; returns the path of a new temporary ``.dcm`` file (the caller deletes it).

    ``ValueError`` when the label is empty, not 3D, or not on the series' slices.
    """
    mask = sitk.ReadImage(str(label_file))
    if mask.GetDimension() != 3:
        raise ValueError(f"the label must be a 3D image, got {mask.GetDimension()}D")
    values = sitk.GetArrayViewFromImage(mask)
    if np.any(values < 0) or np.any(values != np.round(values)):
        raise ValueError("the label must hold non-negative integer segment numbers")
    labels = [int(v) for v in np.unique(values) if v != 0]
    if not labels:
        raise ValueError("the label is empty: there is no segment to save")
    sources = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(Path(series_dir).glob("*.dcm"))]
    if not sources:
        raise ValueError(f"no DICOM files of the image series in {series_dir}")
    if mask.GetDepth() != len(sources):
        raise ValueError(f"the label has {mask.GetDepth()} slices, the image series {len(sources)}")
    mask = sitk.Cast(mask, sitk.sitkUInt16)
    writer = pydicom_seg.MultiClassWriter(
        template=segment_template(labels, label_info),
        inplane_cropping=False,
        skip_empty_slices=True,
        skip_missing_segment=False,
    )
    positions = {tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 2)) for ds in sources}
    slices = {tuple(np.round(mask.TransformIndexToPhysicalPoint((0, 0, z)), 2)) for z in range(mask.GetDepth())}
    if positions != slices:
        raise ValueError("the label's slices are not at the image series' slice positions")
    frame_of_reference = str(sources[0].FrameOfReferenceUID)
    seg = writer.write(mask, sources)
    # pydicom-seg 0.4.1 shares the source's FrameOfReferenceUID element and then sets a new
    # UID on it (in the source dataset too); viewers overlay a SEG only in its source's frame
    seg.FrameOfReferenceUID = frame_of_reference
    out = tempfile.NamedTemporaryFile(suffix=".dcm", delete=False).name
    seg.save_as(out)
    logger.info("DICOM SEG with segments %s written to %s", labels, out)
    return out
