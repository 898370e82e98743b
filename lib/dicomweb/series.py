"""A NIfTI volume as an uncompressed DICOM CT series, with the geometry to map back.

The series is written in the usual radiological layout (voxel axes reoriented to L, P, S:
columns run to the patient's left, rows to posterior, slices to superior), Explicit VR
Little Endian, one file per slice, signed 16-bit stored values with a rescale to HU. UIDs
are derived from the NIfTI file's content, so the same input always gives the same study.

``SeriesGeometry`` keeps what a test needs to check clicks and results against the
original file: ``index_to_lps`` maps a series voxel index ``(column, row, slice)`` (the
axes MONAI Label's server uses after converting the series to NIfTI, and the axes of
OHIF's ``worldToIndex``) to patient coordinates in mm, ``series_to_source`` maps it to a
voxel index of the original NIfTI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

logger = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RESCALE_INTERCEPT = -1024
WINDOW = (40, 400)  # abdomen window (centre, width), HU


@dataclasses.dataclass
class SeriesGeometry:
    """UIDs and voxel geometry of a written series."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    shape: tuple[int, int, int]  # (columns, rows, slices)
    index_to_lps: list[list[float]]  # 4x4, series (column, row, slice) -> LPS mm
    series_to_source: list[list[float]]  # 4x4, series (column, row, slice) -> source NIfTI (i, j, k)
    files: list[str]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "SeriesGeometry":
        data = json.loads(Path(path).read_text())
        data["shape"] = tuple(data["shape"])
        return cls(**data)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along (column, row, slice)."""
        return np.linalg.norm(np.asarray(self.index_to_lps)[:3, :3], axis=0)

    def to_lps(self, index) -> np.ndarray:
        """LPS coordinates (mm) of series voxel indices ``(n, 3)``."""
        return _apply(self.index_to_lps, index)

    def to_index(self, lps) -> np.ndarray:
        """Series voxel indices (rounded) of LPS coordinates ``(n, 3)``."""
        return np.rint(_apply(np.linalg.inv(self.index_to_lps), lps)).astype(np.int64)

    def to_source(self, index) -> np.ndarray:
        """Source NIfTI voxel indices (rounded) of series voxel indices ``(n, 3)``."""
        return np.rint(_apply(self.series_to_source, index)).astype(np.int64)

    def on_series_grid(self, source: np.ndarray) -> np.ndarray:
        """An array on the source NIfTI's voxel grid (e.g. a reference label) on the series grid."""
        index = np.indices(self.shape).reshape(3, -1).T
        return np.asarray(source)[tuple(self.to_source(index).T)].reshape(self.shape)


def _apply(matrix, points) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return (np.asarray(matrix) @ np.c_[pts, np.ones(len(pts))].T)[:3].T


def _uid(seed: str, what: str) -> str:
    return generate_uid(entropy_srcs=[seed, what])


def to_series_layout(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(array, index_to_lps, series_to_source)``: ``array`` reoriented to (L, P, S) voxel axes."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    reoriented = apply_orientation(array, transform)
    series_to_source = inv_ornt_aff(transform, array.shape)
    index_to_lps = RAS_TO_LPS @ affine @ series_to_source
    axes = index_to_lps[:3, :3] / np.linalg.norm(index_to_lps[:3, :3], axis=0)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise ValueError("the NIfTI affine has shear or non-orthogonal axes; a DICOM series cannot represent it")
    return np.ascontiguousarray(reoriented), index_to_lps, series_to_source


def write_ct_series(
    nifti: str | Path,
    out_dir: str | Path,
    patient_id: str = "MIDEPSEG-SAMPLE",
    description: str = "MIDeepSeg sample CT",
) -> SeriesGeometry:
    """Write ``nifti`` (a 3D CT in HU) as one DICOM CT file per slice into ``out_dir``."""
    image = nib.load(str(nifti))
    if len(image.shape) != 3:
        raise ValueError(f"{nifti}: expected a 3D volume, got shape {image.shape}")
    hu = np.rint(np.asarray(image.dataobj, dtype=np.float64))
    stored = hu - RESCALE_INTERCEPT
    if stored.min() < np.iinfo(np.int16).min or stored.max() > np.iinfo(np.int16).max:
        raise ValueError(f"{nifti}: HU range {hu.min()}..{hu.max()} does not fit signed 16-bit stored values")
    data, index_to_lps, series_to_source = to_series_layout(stored.astype(np.int16), image.affine)
    columns, rows, slices = data.shape
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    orientation = np.r_[index_to_lps[:3, 0] / spacing[0], index_to_lps[:3, 1] / spacing[1]]

    seed = hashlib.sha256(Path(nifti).read_bytes()).hexdigest()
    study_uid, series_uid, frame_uid = (_uid(seed, w) for w in ("study", "series", "frame"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(slices):
        position = index_to_lps @ np.array([0.0, 0.0, s, 1.0])
        ds = _ct_slice(data[:, :, s].T, study_uid, series_uid, frame_uid, _uid(seed, f"slice{s}"), s + 1)
        ds.PatientID, ds.PatientName, ds.SeriesDescription, ds.StudyDescription = (
            patient_id, patient_id.replace("-", "^"), description, description,
        )  # fmt: skip
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position[:3]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.SliceLocation = f"{position[2]:.4f}"
        path = out / f"slice_{s:04d}.dcm"
        ds.save_as(str(path), write_like_original=False)
        files.append(str(path))
    logger.info("%s -> %d DICOM slices in %s (series %s)", nifti, slices, out, series_uid)
    return SeriesGeometry(
        study_uid, series_uid, frame_uid, (columns, rows, slices),
        index_to_lps.tolist(), series_to_source.tolist(), files,
    )  # fmt: skip


def _ct_slice(pixels: np.ndarray, study: str, series: str, frame: str, sop: str, number: int) -> Dataset:
    """One CT Image Storage instance (Explicit VR Little Endian) with ``pixels`` (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20230101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.PositionReferenceIndicator, ds.BodyPartExamined = "", "ABDOMEN"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"
    ds.WindowCenter, ds.WindowWidth = str(WINDOW[0]), str(WINDOW[1])
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds
