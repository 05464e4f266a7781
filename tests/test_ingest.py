"""The receive path's own file encoding, checked against pydicom's reading of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.db import Base, Database, Instance, Series, make_engine
from node.ingest import Ingest, encode_file, encode_file_meta
from node.samples import CT_128, make_series
from node.spool import Spool
from tests.conftest import encode_explicit_le

EXPLICIT_LE = str(ExplicitVRLittleEndian)


def test_file_meta_matches_what_pydicom_writes_and_reads(tmp_path: Path) -> None:
    ds = make_series(CT_128, slices=1)[0]
    raw = encode_explicit_le(ds)
    ts = EXPLICIT_LE
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
    path.write_bytes(b"".join(encode_file(ours, raw)))
    back = dcmread(path)
    assert back.file_meta.SourceApplicationEntityTitle == "CT_SCANNER"
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert (back.pixel_array == ds.pixel_array).all()


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    """An Ingest on its own SQLite index and spool."""
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    ingest = Ingest(db, Spool(tmp_path / "spool"), lambda ds: False)
    yield ingest
    db.close()


def test_accept_stores_durably_then_indexes(ingest: Ingest) -> None:
    series = make_series(CT_128, slices=3)
    for ds in series:
        accepted = ingest.accept(ds, encode_explicit_le(ds), EXPLICIT_LE, "SCU")
        assert not accepted.duplicate
        stored = dcmread(ingest.spool.path(accepted.path))
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
    with ingest.db.read() as session:
        row = session.get(Series, str(series[0].SeriesInstanceUID))
        assert row is not None and row.instance_count == 3
        assert len(session.scalars(select(Instance)).all()) == 3


def test_duplicate_under_another_series_leaves_one_file(ingest: Ingest) -> None:
    ds = make_series(CT_128, slices=1)[0]
    first = ingest.accept(ds, encode_explicit_le(ds), EXPLICIT_LE, "SCU")
    moved = ds.copy()
    moved.SeriesInstanceUID = "1.2.3.999"
    again = ingest.accept(moved, encode_explicit_le(moved), EXPLICIT_LE, "SCU")
    assert again.duplicate and again.path == first.path
    assert ingest.spool.path(first.path).exists()
    assert sorted(p.name for p in ingest.spool.files()) == [f"{ds.SOPInstanceUID}.dcm"]


def test_copy_indexed_at_the_same_path_is_kept(ingest: Ingest) -> None:
    """Two associations sending one instance at once write the same file: keep it."""
    ds = make_series(CT_128, slices=1)[0]
    first = ingest.accept(ds, encode_explicit_le(ds), EXPLICIT_LE, "SCU")
    # The other association's file is renamed over this one just before
    # its index insert finds the row.
    ingest.spool.path(first.path).unlink()
    again = ingest.accept(ds, encode_explicit_le(ds), EXPLICIT_LE, "OTHER")
    assert again.duplicate and again.path == first.path
    assert dcmread(ingest.spool.path(first.path)).SOPInstanceUID == ds.SOPInstanceUID


def test_failed_index_leaves_the_file_for_reindexing(ingest: Ingest) -> None:
    ds = make_series(CT_128, slices=1)[0]
    with ingest.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE series")
    with pytest.raises(SQLAlchemyError):
        ingest.accept(ds, encode_explicit_le(ds), EXPLICIT_LE, "SCU")
    with ingest.db.read() as session:
        assert session.scalars(select(Instance)).all() == []
    # Written and durable, never answered Success: the next start indexes it.
    Base.metadata.create_all(ingest.db.engine)
    assert ingest.reindex_spool() == 1
    with ingest.db.read() as session:
        assert session.scalars(select(Instance.sop_instance_uid)).all() == [str(ds.SOPInstanceUID)]
