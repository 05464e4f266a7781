"""Crashes, restarts, an unreachable PACS, late instances, re-sends and loops, end to end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node import provenance as prov
from node.peers import LOOPBACK, Orthanc, free_port, run_tool, start_orthanc, wait_until
from node.samples import CT_128, make_series, write_series
from tests.conftest import NodeRunner, ct_rule, pacs_destination

pytestmark = pytest.mark.e2e


def storescu(port: int, files: list[Path]) -> None:
    sent = run_tool(["storescu", "-aec", "RADNODE", LOOPBACK, str(port), *map(str, files)])
    assert sent.returncode == 0, sent.stderr


def enhanced(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    return [
        s
        for s in orthanc.series_of_study(study_uid)
        if str(s["MainDicomTags"].get("SeriesDescription", "")).startswith("AI ENHANCED")
    ]


def one_enhanced(orthanc: Orthanc, study_uid: str, count: int) -> dict[str, Any] | None:
    """The study's one enhanced series if it holds ``count`` instances, else None."""
    found = enhanced(orthanc, study_uid)
    return found[0] if len(found) == 1 and len(found[0]["Instances"]) == count else None


def wait_enhanced(
    orthanc: Orthanc, study_uid: str, count: int, timeout: float = 120
) -> dict[str, Any]:
    result: dict[str, Any] = wait_until(
        lambda: one_enhanced(orthanc, study_uid, count), timeout, f"one enhanced series of {count}"
    )
    return result


def study_uid(series: list[Any]) -> str:
    return str(series[0].StudyInstanceUID)


def db_rows(runner: NodeRunner, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(runner.data_dir / "radnode.db") as conn:
        return list(conn.execute(sql))


def events(runner: NodeRunner, series_uid: str) -> list[str]:
    return [r["event"] for r in runner.http(f"/audit?series={series_uid}")]


def test_restart_mid_series_loses_nothing(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()], quiet_seconds=3)
    node_runner.start()
    series = make_series(CT_128, slices=4)
    files = write_series(series, tmp_path / "in")
    storescu(node_runner.port, files[:2])
    # The association ended: its receipt is audited (just after the release
    # is answered) and its journal entry gone.
    query = f"/audit?series={series[0].SeriesInstanceUID}&event=instances-received"
    received = wait_until(lambda: node_runner.http(query), 30, "the receipt record")
    assert [r["detail"]["instances"] for r in received] == [2]
    journal = node_runner.data_dir / "associations"
    wait_until(lambda: not list(journal.glob("*/*.json")), 30, "the journal entry removed")
    node_runner.kill()  # SIGKILL: no chance to tidy up
    # What a kill in the middle of a write leaves: a temporary, never renamed
    # (and never answered Success), an hour old by the next start.
    folder = node_runner.data_dir / "spool" / study_uid(series) / str(series[0].SeriesInstanceUID)
    cut_off = folder / f".{series[2].SOPInstanceUID}.dcm.99999-0.tmp"
    cut_off.write_bytes(b"half an instance")
    long_ago = time.time() - 2 * 3600
    os.utime(cut_off, (long_ago, long_ago))
    node_runner.start()
    assert not cut_off.exists()
    started = node_runner.http("/audit?event=application-start")
    assert [r["detail"]["stale_temporaries_removed"] for r in started] == [0, 1]
    storescu(node_runner.port, files[2:])
    study = study_uid(series)
    found = wait_enhanced(orthanc, study, 4)
    assert len(db_rows(node_runner, "SELECT * FROM instances")) == 4
    sources = {
        dcmread(orthanc.instance_file(i)).SourceImageSequence[0].ReferencedSOPInstanceUID
        for i in found["Instances"]
    }
    assert sources == {str(ds.SOPInstanceUID) for ds in series}


def test_receipts_of_an_association_cut_off_by_a_kill_are_audited(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()], quiet_seconds=3)
    node_runner.start()
    series = make_series(CT_128, slices=3)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, node_runner.port, ae_title="RADNODE")
    assert assoc.is_established
    try:
        for ds in series:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
        node_runner.kill()  # the association never ends on the node's side
    finally:
        assoc.abort()
    node_runner.start()
    series_uid = str(series[0].SeriesInstanceUID)
    received = node_runner.http(f"/audit?series={series_uid}&event=instances-received")
    assert len(received) == 1
    record = received[0]
    assert record["actor"] == "SCANNER"
    assert record["detail"]["instances"] == 3
    assert record["detail"]["aborted"] is True
    assert "recovered" in record["detail"]
    assert list((node_runner.data_dir / "associations").glob("*/*.json")) == []
    # The series itself goes on as if nothing happened.
    wait_enhanced(orthanc, study_uid(series), 3)


def test_pacs_down_at_first_and_node_killed_mid_delivery(
    tmp_path: Path, node_runner: NodeRunner
) -> None:
    pacs_port, pacs_http = free_port(), free_port()
    destination = {"name": "pacs", "ae_title": "ORTHANC", "host": LOOPBACK, "port": pacs_port}
    node_runner.configure(
        [destination],
        [ct_rule()],
        extra_tables={"delivery": {"backoff_initial_seconds": 0.5, "backoff_max_seconds": 1}},
    )
    node_runner.start()
    series = make_series(CT_128, slices=3)
    storescu(node_runner.port, write_series(series, tmp_path / "in"))
    source = str(series[0].SeriesInstanceUID)
    wait_until(lambda: "delivery-retried" in events(node_runner, source), 120, "a failed delivery")
    node_runner.kill()
    pending = db_rows(node_runner, "SELECT state FROM deliveries")
    assert len(pending) == 3
    assert {state for (state,) in pending} <= {"pending", "sending"}

    orthanc = start_orthanc(tmp_path / "pacs", dicom_port=pacs_port, http_port=pacs_http)
    try:
        node_runner.start()
        wait_enhanced(orthanc, study_uid(series), 3)
        wait_until(lambda: "instances-sent" in events(node_runner, source), 30, "sent record")
        assert {s for (s,) in db_rows(node_runner, "SELECT state FROM deliveries")} == {"sent"}
    finally:
        orthanc.stop()


def test_delivery_gives_up_after_max_attempts_and_an_operator_retries(
    tmp_path: Path, node_runner: NodeRunner
) -> None:
    pacs_port = free_port()
    destination = {"name": "pacs", "ae_title": "ORTHANC", "host": LOOPBACK, "port": pacs_port}
    node_runner.configure(
        [destination],
        [ct_rule()],
        extra_tables={"delivery": {"max_attempts": 2, "backoff_initial_seconds": 0.2}},
    )
    node_runner.start()
    series = make_series(CT_128, slices=2)
    storescu(node_runner.port, write_series(series, tmp_path / "in"))
    source = str(series[0].SeriesInstanceUID)
    wait_until(lambda: "delivery-failed" in events(node_runner, source), 120, "delivery-failed")
    assert {s for (s,) in db_rows(node_runner, "SELECT state FROM deliveries")} == {"failed"}
    failed = node_runner.http("/audit?event=delivery-failed")[0]
    assert failed["outcome"] == 8
    assert failed["detail"]["instances"] == 2

    # The PACS is back; an operator sends the failed deliveries again.
    orthanc = start_orthanc(tmp_path / "pacs", dicom_port=pacs_port)
    try:
        retry = subprocess.run(
            [
                sys.executable,
                "-m",
                "node",
                "deliveries",
                "retry",
                "--config",
                str(node_runner.config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert retry.returncode == 0 and "2 failed deliveries queued again" in retry.stdout
        wait_enhanced(orthanc, study_uid(series), 2)
        listing = subprocess.run(
            [sys.executable, "-m", "node", "deliveries", "--config", str(node_runner.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "sent" in listing.stdout and "failed" not in listing.stdout
    finally:
        orthanc.stop()


def test_late_instance_reruns_and_replaces_outputs(tmp_path: Path, node_runner: NodeRunner) -> None:
    # A PACS that lets a resent SOP Instance UID replace what it holds.
    orthanc = start_orthanc(tmp_path / "pacs", overwrite=True)
    try:
        node_runner.configure([pacs_destination(orthanc)], [ct_rule()])
        node_runner.start()
        series = make_series(CT_128, slices=3)
        files = write_series(series, tmp_path / "in")
        study = study_uid(series)
        storescu(node_runner.port, files[:2])
        first = wait_enhanced(orthanc, study, 2)
        storescu(node_runner.port, files[2:])
        jobs = "SELECT id, generation, state FROM jobs ORDER BY id"
        done = [(1, "succeeded"), (2, "succeeded")]  # (generation, state)

        def ran() -> list[Any] | None:
            rows = db_rows(node_runner, jobs)
            return rows if [row[1:] for row in rows] == done else None

        second_job = wait_until(ran, 120, "the re-run of the new generation")[1][0]

        def replaced() -> dict[str, Any] | None:
            found = one_enhanced(orthanc, study, 3)
            if found is None:
                return None
            outputs = [dcmread(orthanc.instance_file(i)) for i in found["Instances"]]
            jobs_seen = {prov.read_private(out, prov.PRIVATE_JOB_ID) for out in outputs}
            return found if jobs_seen == {second_job} else None

        second = wait_until(replaced, 120, "every output from the re-run")
        # Same output series; the two earlier outputs were replaced (they now
        # come from the second job), not duplicated.
        assert (
            second["MainDicomTags"]["SeriesInstanceUID"]
            == first["MainDicomTags"]["SeriesInstanceUID"]
        )
        assert set(first["Instances"]) < set(second["Instances"])
    finally:
        orthanc.stop()


def test_same_series_sent_twice_gives_one_output_series(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()])
    node_runner.start()
    series = make_series(CT_128, slices=2)
    files = write_series(series, tmp_path / "in")
    study = study_uid(series)
    storescu(node_runner.port, files)
    first = wait_enhanced(orthanc, study, 2)
    pixels = [dcmread(orthanc.instance_file(i)).PixelData for i in sorted(first["Instances"])]

    # A second node (fresh index) runs the same job again: identical UIDs and pixels.
    again = NodeRunner(tmp_path / "node2")
    again.configure([pacs_destination(orthanc)], [ct_rule()])
    again.start()
    try:
        storescu(again.port, files)
        wait_until(
            lambda: "instances-sent" in events(again, str(series[0].SeriesInstanceUID)),
            120,
            "re-send",
        )
    finally:
        again.stop()
    second = wait_enhanced(orthanc, study, 2)
    assert second["ID"] == first["ID"]
    assert [
        dcmread(orthanc.instance_file(i)).PixelData for i in sorted(second["Instances"])
    ] == pixels


def test_outputs_sent_back_to_the_node_are_never_processed(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()])
    node_runner.start()
    series = make_series(CT_128, slices=2)
    storescu(node_runner.port, write_series(series, tmp_path / "in"))
    found = wait_enhanced(orthanc, study_uid(series), 2)
    # A PACS that forwards everything sends the outputs back.
    back = tmp_path / "back"
    back.mkdir()
    paths = []
    for instance in found["Instances"]:
        path = back / f"{instance}.dcm"
        path.write_bytes(orthanc.instance_file(instance).getvalue())
        paths.append(path)
    storescu(node_runner.port, paths)
    output_uid = found["MainDicomTags"]["SeriesInstanceUID"]
    wait_until(lambda: "series-ignored" in events(node_runner, output_uid), 30, "series-ignored")
    assert db_rows(node_runner, f"SELECT * FROM jobs WHERE series_uid = '{output_uid}'") == []
    assert len(enhanced(orthanc, study_uid(series))) == 1
