"""Write a small uncompressed MR DICOM series with pydicom, for reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

SERIES_UID = "1.2.826.0.1.3680043.8.498.77"


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> Path:
    """``volume`` is indexed [column, row, slice]; slices are axial, patient LPS axes."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = f"{SERIES_UID}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = SERIES_UID
        ds.StudyInstanceUID = SERIES_UID + ".0"
        ds.Modality = "MR"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, k * spacing[2]]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.uint16)).tobytes()
        # Reverse order on disk: the reader must sort slices by position, not by file name.
        ds.save_as(folder / f"im{volume.shape[2] - k:03d}.dcm", enforce_file_format=True)
    return folder
