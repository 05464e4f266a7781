"""Outputs as a PACS holds them: derived geometry, label, signatures and provenance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from node.peers import LOOPBACK, Orthanc, run_tool, wait_until
from node.samples import CT_128, make_series, write_series
from tests.conftest import NodeRunner, ct_rule, pacs_destination

pytestmark = pytest.mark.e2e

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_derived_labelled_output_sits_next_to_its_source_signed_and_verifiable(
    tmp_path: Path, orthanc: Orthanc, node_runner: NodeRunner
) -> None:
    node_runner.configure([pacs_destination(orthanc)], [ct_rule(output="derived", label=True)])
    node_runner.start()
    series = make_series(CT_128, slices=3, series_description="CHEST LD")
    files = write_series(series, tmp_path / "in")
    study = str(series[0].StudyInstanceUID)
    # The scanner sends to the PACS and to radnode.
    for port, aec in ((orthanc.port, orthanc.aet), (node_runner.port, "RADNODE")):
        sent = run_tool(["storescu", "-aec", aec, LOOPBACK, str(port), *map(str, files)])
        assert sent.returncode == 0, sent.stderr

    def both() -> list[dict[str, object]] | None:
        found = orthanc.series_of_study(study)
        ready = len(found) == 2 and all(len(s["Instances"]) == 3 for s in found)
        return found if ready else None

    found = wait_until(both, 120, "source and enhanced series in one study")
    enhanced = next(
        s for s in found if s["MainDicomTags"]["SeriesDescription"].startswith("AI ENHANCED")
    )
    out_dir = tmp_path / "from-pacs"
    out_dir.mkdir()
    by_source = {str(ds.SOPInstanceUID): ds for ds in series}
    paths = []
    for instance in enhanced["Instances"]:
        path = out_dir / f"{instance}.dcm"
        path.write_bytes(orthanc.instance_file(instance).getvalue())
        paths.append(path)
        out = dcmread(path)
        source = by_source[out.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert out.SOPClassUID == CT_IMAGE_STORAGE
        assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert out.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert [float(v) for v in out.ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient]
        )
        assert list(out.ImageOrientationPatient) == pytest.approx(
            list(source.ImageOrientationPatient)
        )
        assert out.InstanceNumber == source.InstanceNumber
        assert out.BurnedInAnnotation == "YES"
        assert int(out.SeriesNumber) == int(source.SeriesNumber) + 1000

    cert = node_runner.data_dir / "keys" / "signing-cert.pem"
    for path in paths:
        check = run_tool(["dcmsign", "--verify", "+rc", "+cf", str(cert), str(path)])
        assert check.returncode == 0, check.stdout + check.stderr

    verify = subprocess.run(
        [sys.executable, "-m", "node", "verify", "--cert", str(cert), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # One changed pixel afterwards: both checkers refuse the file.
    tampered = dcmread(paths[0])
    pixels = bytearray(tampered.PixelData)
    pixels[1000] ^= 0x01
    tampered.PixelData = bytes(pixels)
    bad = tmp_path / "tampered.dcm"
    tampered.save_as(bad, enforce_file_format=True)
    assert run_tool(["dcmsign", "--verify", "+rc", "+cf", str(cert), str(bad)]).returncode != 0
    refused = subprocess.run(
        [sys.executable, "-m", "node", "verify", "--cert", str(cert), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
