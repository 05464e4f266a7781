"""End to end: dcmtk sends a CT series to a running node, which delivers to a real Orthanc."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.peers import LOOPBACK, Orthanc, run_tool, wait_until
from node.samples import CT_128, make_series, source_path, write_series
from tests.conftest import NodeRunner, ct_rule, pacs_destination

pytestmark = pytest.mark.e2e


def storescu(
    port: int, files: list[Path], aet: str = "SCANNER"
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` to the node with dcmtk's storescu (one association)."""
    return run_tool(
        ["storescu", "-aet", aet, "-aec", "RADNODE", LOOPBACK, str(port), *map(str, files)]
    )


def enhanced_series(orthanc: Orthanc, study_uid: str, expected: int) -> dict[str, Any] | None:
    """The enhanced series in ``study_uid`` once it holds ``expected`` instances."""
    for series in orthanc.series_of_study(study_uid):
        tags = series["MainDicomTags"]
        if (
            str(tags.get("SeriesDescription", "")).startswith("AI ENHANCED")
            and len(series["Instances"]) == expected
        ):
            return series
    return None


def audit_events(runner: NodeRunner, series_uid: str) -> list[str]:
    """Event names the node's audit log holds for a source series."""
    return [r["event"] for r in runner.http(f"/audit?series={series_uid}")]


def test_ct_series_is_enhanced_and_delivered_to_the_source_study(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner, database_url: str
) -> None:
    node_runner.configure(
        [pacs_destination(orthanc)], [ct_rule()], extra_node={"database_url": database_url}
    )
    node_runner.start()
    series = make_series(CT_128, slices=4, series_description="LOW DOSE ABD", noise_hu=20)
    files = write_series(series, tmp_path / "in")
    study_uid = str(series[0].StudyInstanceUID)
    source_uid = str(series[0].SeriesInstanceUID)

    echo = run_tool(["echoscu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)])
    assert echo.returncode == 0, echo.stderr
    sent = storescu(node_runner.port, files)
    assert sent.returncode == 0, sent.stderr

    found = wait_until(lambda: enhanced_series(orthanc, study_uid, 4), 120, "enhanced series")
    tags = found["MainDicomTags"]
    assert tags["SeriesDescription"] == "AI ENHANCED: LOW DOSE ABD"
    assert tags["SeriesInstanceUID"] != source_uid
    assert tags["Modality"] in ("CT", "OT")

    # Every output in the PACS is a Secondary Capture with the provenance table.
    instance_id = found["Instances"][0]
    ds = dcmread(orthanc.instance_file(instance_id))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.StudyInstanceUID == study_uid
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in {s.SOPInstanceUID for s in series}
    assert "DigitalSignaturesSequence" in ds
    assert ds.ContentQualification == "RESEARCH"

    events = wait_until(
        lambda: (e := audit_events(node_runner, source_uid)) and "instances-sent" in e and e,
        60,
        "instances-sent audit record",
    )
    for name in (
        "instances-received",
        "series-completed",
        "job-queued",
        "job-started",
        "job-succeeded",
    ):
        assert name in events
    # The source study in Orthanc holds only the enhanced series (the source went to the node).
    assert len(orthanc.series_of_study(study_uid)) == 1

    assert node_runner.http("/health") | {"version": ""} == {
        "status": "ok",
        "database": True,
        "dicom": True,
        "version": "",
    }
    jobs = node_runner.http("/jobs")
    assert [(j["state"], j["outputs"], j["pipeline"]) for j in jobs] == [
        ("succeeded", 4, "ct-denoise")
    ]
    metrics = node_runner.http_text("/metrics")
    assert 'radnode_jobs{state="succeeded"} 1' in metrics
    assert 'radnode_deliveries{state="sent"} 4' in metrics


_PACS = '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "127.0.0.1"\nport = 4242\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nport = 70000\n\n" + _PACS, "node.port = 70000"),
        (
            _PACS + '\n[[rules]]\nname = "ct"\npipeline = "ct-denoise"\ndestinations = ["pacs"]\n'
            'match = {Modality = "CT"}\nparams = {method = "modle"}\n',
            "rules[0].params (ct): Unknown ct-denoise method 'modle'",
        ),
    ],
)
def test_bad_config_stops_start_up_naming_key_and_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr


def test_jpeg2000_series_is_decoded_processed_and_delivered(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()])
    node_runner.start()
    template = dcmread(source_path("693_J2KR.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for i in range(2):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    sent = run_tool(
        ["storescu", "-xv", "-aec", "RADNODE", LOOPBACK, str(node_runner.port), *map(str, files)]
    )
    assert sent.returncode == 0, sent.stderr
    found = wait_until(lambda: enhanced_series(orthanc, study_uid, 2), 180, "enhanced series")
    out = dcmread(orthanc.instance_file(found["Instances"][0]))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.pixel_array.shape == (512, 512)


def test_pipelines_are_built_at_start_up_not_at_the_first_job(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule()])
    node_runner.start()
    building = "building the pipelines of 1 rule(s) ahead of their first jobs"
    ready = "pipeline of rule 'low-dose-ct' ready"
    wait_until(lambda: ready in node_runner.log_text(), 120, "the pipeline built")
    assert building in node_runner.log_text()
    assert node_runner.http("/jobs") == []
    node_runner.stop()
    # A node with no workers (receive only) or warm_up = false builds nothing
    # ahead (the message above is logged before the node answers, or never).
    variants: list[dict[str, Any]] = [{"workers": 0}, {"warm_up": False}]
    for stops, extra in enumerate(variants, start=1):
        node_runner.configure([pacs_destination(orthanc)], [ct_rule()], extra_node=extra)
        node_runner.start()
        # Each earlier stop (SIGTERM) was recorded before the process ended.
        assert len(node_runner.http("/audit?event=application-stop")) == stops
        echoed = run_tool(["echoscu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)])
        assert echoed.returncode == 0, echoed.stderr
        node_runner.stop()
        assert node_runner.log_text().count(building) == 1
        assert node_runner.log_text().count(ready) == 1
