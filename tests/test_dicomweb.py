"""The DICOMweb side without a PACS: the sample CT as a DICOM series (read back the way the
server converts it) and the offline DICOM SEG writer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lib.dicomweb.seg import write_dicom_seg
from lib.dicomweb.series import SeriesGeometry, write_ct_series
from lib.dicomweb.stack import SAMPLE_CT, SAMPLE_SPLEEN


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """``(geometry, server-side image)``: the sample CT written as DICOM and read with
    SimpleITK's series reader, as MONAI Label's ``dicom_to_nifti`` does."""
    out = tmp_path_factory.mktemp("dicom")
    geometry = write_ct_series(SAMPLE_CT, out)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    return geometry, reader.Execute(), out


def _label_like(image: sitk.Image, array_xyz: np.ndarray, path) -> str:
    label = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(path))
    return str(path)


def test_series_is_uncompressed_ct_with_uids_and_geometry(series, tmp_path):
    geometry, image, out = series
    files = sorted(out.glob("*.dcm"))
    assert len(files) == geometry.shape[2] == 30
    first = pydicom.dcmread(str(files[0]))
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.Modality == "CT" and first.StudyInstanceUID == geometry.study_uid
    for uid in (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, first.FrameOfReferenceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # same study UIDs for the same input
    assert write_ct_series(SAMPLE_CT, tmp_path).study_uid == geometry.study_uid
    geometry.save(tmp_path / "g.json")
    assert SeriesGeometry.load(tmp_path / "g.json") == geometry


def test_series_voxels_map_back_to_the_nifti(series):
    """Server-side (column, row, slice) voxels hold the NIfTI's HU at ``to_source``, and the
    reader's geometry is ``index_to_lps``."""
    geometry, image, _ = series
    hu = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    source = np.asarray(nib.load(str(SAMPLE_CT)).dataobj)
    assert hu.shape == geometry.shape
    np.testing.assert_array_equal(hu, geometry.on_series_grid(source))
    corner = np.asarray(geometry.shape) - 1
    np.testing.assert_allclose(geometry.to_lps(corner)[0], image.TransformIndexToPhysicalPoint(corner.tolist()), atol=1e-3)
    np.testing.assert_array_equal(geometry.to_index(geometry.to_lps(corner)), [corner])
    # the NIfTI is RAS; the series runs to the patient's left and back: columns and rows flip
    np.testing.assert_array_equal(geometry.to_source([[0, 0, 0]])[0], [source.shape[0] - 1, source.shape[1] - 1, 0])


def test_dicom_seg_round_trip(series, tmp_path):
    geometry, image, out = series
    spleen = geometry.on_series_grid(np.asarray(nib.load(str(SAMPLE_SPLEEN)).dataobj) > 0)
    seg_file = write_dicom_seg(_label_like(image, spleen, tmp_path / "l.nii.gz"), out, [{"name": "spleen"}])
    seg = pydicom.dcmread(seg_file)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "spleen"
    assert seg.StudyInstanceUID == geometry.study_uid
    assert seg.FrameOfReferenceUID == geometry.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == geometry.series_uid
    import pydicom_seg

    result = pydicom_seg.SegmentReader().read(seg)
    decoded = result.segment_image(1)
    frames = sitk.GetArrayFromImage(decoded).transpose(2, 1, 0) > 0
    first = geometry.to_index(decoded.TransformIndexToPhysicalPoint((0, 0, 0)))[0]
    assert tuple(first[:2]) == (0, 0)
    np.testing.assert_array_equal(frames, spleen[:, :, first[2] : first[2] + frames.shape[2]])
    assert not np.delete(spleen, np.s_[first[2] : first[2] + frames.shape[2]], axis=2).any()


def test_dicom_seg_rejects_empty_and_misplaced_labels(series, tmp_path):
    geometry, image, out = series
    empty = _label_like(image, np.zeros(geometry.shape, np.uint8), tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(empty, out)
    full = _label_like(image, np.ones(geometry.shape, np.uint8), tmp_path / "full.nii.gz")
    moved = sitk.ReadImage(full)
    moved.SetOrigin(tuple(np.asarray(moved.GetOrigin()) + (0, 0, 1.5)))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(ValueError, match="slice positions"):
        write_dicom_seg(tmp_path / "moved.nii.gz", out)
    with pytest.raises(ValueError, match="no DICOM files"):
        write_dicom_seg(full, tmp_path)
