"""DICOMweb side of the app: a sample DICOM series, an Orthanc PACS runner and a datastore that saves DICOM SEG offline."""
