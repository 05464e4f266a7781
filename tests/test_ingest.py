"""The receive path's own file encoding, checked against pydicom's reading of it."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.ingest import encode_file, encode_file_meta
from node.samples import CT_128, make_series


def test_file_meta_matches_what_pydicom_writes_and_reads(tmp_path: Path) -> None:
    ds = make_series(CT_128, slices=1)[0]
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    ts = "1.2.840.10008.1.2.1"
    ours = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "CT_SCANNER")

    reference = FileMetaDataset()
    reference.MediaStorageSOPClassUID = ds.SOPClassUID
    reference.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    reference.TransferSyntaxUID = UID(ts)
    reference.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    reference.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    reference.SourceApplicationEntityTitle = "CT_SCANNER"
    expected = DicomBytesIO()
    expected.is_little_endian, expected.is_implicit_VR = True, False
    write_file_meta_info(expected, reference, enforce_standard=True)
    assert ours == expected.getvalue()

    path = tmp_path / "x.dcm"
    path.write_bytes(b"".join(encode_file(ours, raw.getvalue())))
    back = dcmread(path)
    assert back.file_meta.SourceApplicationEntityTitle == "CT_SCANNER"
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert (back.pixel_array == ds.pixel_array).all()
