"""Receiving over the wire: statuses, bad input, duplicates, AE filtering, compressed syntaxes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from node.peers import LOOPBACK, run_tool, wait_until
from node.samples import CT_128, MR_64, make_series, source_path, write_series
from tests.conftest import NodeRunner

pytestmark = pytest.mark.e2e


@pytest.fixture
def node(node_runner: NodeRunner) -> NodeRunner:
    """A running node whose only rule matches nothing (receive-only tests)."""
    node_runner.configure_receive_only()
    node_runner.start()
    return node_runner


def indexed(runner: NodeRunner) -> list[tuple[str, str]]:
    """(SOP Instance UID, spool path) of every indexed instance."""
    with sqlite3.connect(runner.data_dir / "radnode.db") as conn:
        return list(conn.execute("SELECT sop_instance_uid, path FROM instances"))


def store_raw(port: int, path: Path) -> int:
    """C-STORE a file without decoding it (pynetdicom streams the raw dataset)."""
    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title="RAWSENDER")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title="RADNODE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status)


def store_dataset(port: int, ds: Dataset) -> int:
    """C-STORE a dataset as pynetdicom encodes it."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(LOOPBACK, port, ae_title="RADNODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def rejected_reasons(runner: NodeRunner) -> list[dict[str, Any]]:
    """Details of the node's instance-rejected audit records."""
    return [r["detail"] for r in runner.http("/audit?event=instance-rejected")]


def test_echo_and_store_are_answered_success_only_once_durable(
    tmp_path: Path, node: NodeRunner
) -> None:
    files = write_series(make_series(CT_128, slices=3), tmp_path / "in")
    echo = run_tool(["echoscu", "-aec", "RADNODE", LOOPBACK, str(node.port)])
    assert echo.returncode == 0
    sent = run_tool(["storescu", "-aec", "RADNODE", LOOPBACK, str(node.port), *map(str, files)])
    assert sent.returncode == 0, sent.stderr
    rows = indexed(node)
    assert {uid for uid, _ in rows} == {f.stem for f in files}
    for uid, rel in rows:
        stored = dcmread(node.data_dir / "spool" / rel)
        assert stored.SOPInstanceUID == uid
        assert stored.pixel_array.shape == (128, 128)


def test_the_same_instance_twice_is_stored_once(tmp_path: Path, node: NodeRunner) -> None:
    files = write_series(make_series(CT_128, slices=1), tmp_path / "in")
    for _ in range(2):
        sent = run_tool(["storescu", "-aec", "RADNODE", LOOPBACK, str(node.port), str(files[0])])
        assert sent.returncode == 0, sent.stderr
    assert len(indexed(node)) == 1
    received = wait_until(
        lambda: (r := node.http("/audit?event=instances-received")) and len(r) == 2 and r,
        10,
        "a receive audit record per association",
    )
    assert sum(r["detail"]["instances"] for r in received) == 1
    assert sum(r["detail"]["duplicates"] for r in received) == 1


@pytest.mark.parametrize(
    ("name", "damage", "expected", "reason"),
    [
        ("missing study UID", lambda ds: delattr(ds, "StudyInstanceUID"), 0xA900, "missing"),
        ("missing series UID", lambda ds: delattr(ds, "SeriesInstanceUID"), 0xA900, "missing"),
        ("bad UID", lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.x/../../etc"), 0xA900, "UID"),
        ("rows too large", lambda ds: setattr(ds, "Rows", 4096), 0xA900, "Pixel Data"),
        ("bits too large", lambda ds: setattr(ds, "BitsStored", 24), 0xA900, "BitsStored"),
    ],
)
def test_bad_datasets_get_a_failure_status_and_an_audit_record(
    node: NodeRunner, name: str, damage: Any, expected: int, reason: str
) -> None:
    ds = make_series(CT_128, slices=1)[0]
    damage(ds)
    assert store_dataset(node.port, ds) == expected, name
    reasons = wait_until(lambda: rejected_reasons(node), 10, "instance-rejected record")
    assert reason in reasons[-1]["reason"]
    assert reasons[-1]["status"] == f"0x{expected:04X}"
    assert indexed(node) == []


def test_a_dataset_without_its_sop_instance_uid_is_refused(
    tmp_path: Path, node: NodeRunner
) -> None:
    ds = make_series(CT_128, slices=1)[0]
    path = tmp_path / "no-sop-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    # The request names the instance (from the file meta); its dataset does not.
    stored = dcmread(path)
    del stored.SOPInstanceUID
    stored.save_as(path)
    assert store_raw(node.port, path) == 0xA900
    reasons = wait_until(lambda: rejected_reasons(node), 10, "instance-rejected record")
    assert "SOPInstanceUID" in reasons[-1]["reason"]
    assert indexed(node) == []


def test_truncated_and_garbage_datasets_are_refused_and_the_node_keeps_serving(
    tmp_path: Path, node: NodeRunner
) -> None:
    good, other = write_series(make_series(CT_128, slices=2), tmp_path / "good")
    assert store_raw(node.port, good) == 0x0000

    data = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 20000])
    assert store_raw(node.port, truncated) != 0x0000

    garbage = tmp_path / "garbage.dcm"
    meta_end = data.index(b"\x08\x00", 132 + 12)  # first element after the file meta group
    garbage.write_bytes(data[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x01" * 64)
    assert store_raw(node.port, garbage) != 0x0000

    # Still serving; what was accepted before is intact.
    assert store_raw(node.port, other) == 0x0000
    assert {uid for uid, _ in indexed(node)} == {good.stem, other.stem}
    assert len(rejected_reasons(node)) == 2


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("693_J2KR.dcm", "-xv"),  # CT, JPEG 2000 lossless
        ("MR_small_RLE.dcm", "-xr"),  # MR, RLE lossless
        ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # MR, JPEG-LS lossless
        ("JPEG-LL.dcm", "-xs"),  # NM, JPEG lossless SV1
        ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # secondary capture, JPEG baseline (8-bit)
        ("JPGExtended.dcm", "-xx"),  # NM, JPEG extended (12-bit)
    ],
)
def test_compressed_transfer_syntaxes_are_stored_as_received(
    tmp_path: Path, node: NodeRunner, name: str, option: str
) -> None:
    ds = dcmread(source_path(name))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    sent = run_tool(["storescu", option, "-aec", "RADNODE", LOOPBACK, str(node.port), str(path)])
    assert sent.returncode == 0, sent.stderr
    rows = dict(indexed(node))
    stored = dcmread(node.data_dir / "spool" / rows[ds.SOPInstanceUID])
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    # Decodable through the pylibjpeg plugins, identical to the sender's pixels.
    assert (stored.pixel_array == ds.pixel_array).all()


def test_rle_compressed_by_pydicom_is_received(tmp_path: Path, node: NodeRunner) -> None:
    ds = make_series(MR_64, slices=1)[0]
    ds.compress(RLELossless)
    assert store_dataset(node.port, ds) == 0x0000
    stored = dcmread(node.data_dir / "spool" / dict(indexed(node))[ds.SOPInstanceUID])
    assert stored.file_meta.TransferSyntaxUID == RLELossless


def test_allowed_calling_ae_rejects_others_and_audits_it(
    tmp_path: Path, node_runner: NodeRunner
) -> None:
    node_runner.configure_receive_only(extra_node={"allowed_calling_ae": ["SCANNER"]})
    node_runner.start()
    refused = run_tool(
        ["echoscu", "-aet", "INTRUDER", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)]
    )
    assert refused.returncode != 0
    allowed = run_tool(
        ["echoscu", "-aet", "SCANNER", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)]
    )
    assert allowed.returncode == 0
    records = wait_until(
        lambda: node_runner.http("/audit?event=association-rejected"), 10, "rejection record"
    )
    assert records[0]["actor"] == "INTRUDER"
    assert records[0]["outcome"] == 4
    assert "not allowed" in records[0]["detail"]["reason"]


def test_process_log_has_no_patient_identifiers(tmp_path: Path, node: NodeRunner) -> None:
    series = make_series(CT_128, slices=2, patient_id="PID-SECRET-4711")
    for ds in series:
        ds.PatientName = "Secret^Patient"
    files = write_series(series, tmp_path / "in")
    sent = run_tool(["storescu", "-aec", "RADNODE", LOOPBACK, str(node.port), *map(str, files)])
    assert sent.returncode == 0
    node.stop()
    log = node.log_text()
    assert "PID-SECRET-4711" not in log
    assert "Secret^Patient" not in log
    assert "listening as RADNODE" in log
