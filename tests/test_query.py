"""C-FIND over the node's index, driven by dcmtk's findscu."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from node.peers import LOOPBACK, run_tool
from node.samples import CT_128, MR_64, make_series, write_series
from tests.conftest import NodeRunner

pytestmark = pytest.mark.e2e


@pytest.fixture
def stocked(tmp_path: Path, node_runner: NodeRunner) -> tuple[NodeRunner, list[Dataset]]:
    """A node holding a 3-slice CT series and a 2-slice MR series of one patient."""
    node_runner.configure_receive_only()
    node_runner.start()
    ct = make_series(CT_128, slices=3, patient_id="RADNODE-Q1", series_description="CT HEAD")
    mr = make_series(
        MR_64, slices=2, patient_id="RADNODE-Q1", study_uid=str(ct[0].StudyInstanceUID)
    )
    files = write_series(ct + mr, tmp_path / "in")
    sent = run_tool(
        ["storescu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port), *map(str, files)]
    )
    assert sent.returncode == 0, sent.stderr
    return node_runner, ct


def findscu(node: NodeRunner, out: Path, *keys: str) -> tuple[int, list[Dataset]]:
    """Run findscu (Study Root) and read back its extracted responses."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-S", "-aec", "RADNODE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run_tool([*args, LOOPBACK, str(node.port)])
    return result.returncode, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_series_level_with_counts(
    tmp_path: Path, stocked: tuple[NodeRunner, list[Dataset]]
) -> None:
    node, ct = stocked
    code, found = findscu(
        node,
        tmp_path / "series",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={ct[0].StudyInstanceUID}",
        "SeriesInstanceUID",
        "Modality",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    )
    assert code == 0
    by_modality = {str(ds.Modality): ds for ds in found}
    assert set(by_modality) == {"CT", "MR"}
    assert by_modality["CT"].SeriesDescription == "CT HEAD"
    assert int(by_modality["CT"].NumberOfSeriesRelatedInstances) == 3
    assert by_modality["CT"].SeriesInstanceUID == ct[0].SeriesInstanceUID


def test_study_level_wildcards_and_no_match(
    tmp_path: Path, stocked: tuple[NodeRunner, list[Dataset]]
) -> None:
    node, ct = stocked
    _, found = findscu(
        node,
        tmp_path / "a",
        "QueryRetrieveLevel=STUDY",
        "PatientID=RADNODE-Q*",
        "StudyInstanceUID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
    )
    assert [str(ds.StudyInstanceUID) for ds in found] == [str(ct[0].StudyInstanceUID)]
    assert list(found[0].ModalitiesInStudy) == ["CT", "MR"]
    _, by_modality = findscu(
        node, tmp_path / "m", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", "StudyInstanceUID"
    )
    assert len(by_modality) == 1
    _, no_modality = findscu(
        node, tmp_path / "n", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=US", "StudyInstanceUID"
    )
    assert no_modality == []
    assert int(found[0].NumberOfStudyRelatedSeries) == 2
    assert int(found[0].NumberOfStudyRelatedInstances) == 5
    _, none = findscu(node, tmp_path / "b", "QueryRetrieveLevel=STUDY", "PatientID=OTHER*")
    assert none == []
    _, images = findscu(
        node,
        tmp_path / "c",
        "QueryRetrieveLevel=IMAGE",
        f"SeriesInstanceUID={ct[0].SeriesInstanceUID}",
        "SOPInstanceUID",
    )
    assert {str(ds.SOPInstanceUID) for ds in images} == {str(ds.SOPInstanceUID) for ds in ct}
    queries = node.http("/audit?event=query")
    assert any(q["actor"] == "FINDSCU" and q["detail"]["results"] == 1 for q in queries)


def test_unknown_level_is_refused(
    tmp_path: Path, stocked: tuple[NodeRunner, list[Dataset]]
) -> None:
    node, _ = stocked
    result = run_tool(
        [
            "findscu",
            "-v",
            "-S",
            "-aec",
            "RADNODE",
            "-k",
            "QueryRetrieveLevel=VOLUME",
            LOOPBACK,
            str(node.port),
        ]
    )
    output = (result.stdout + result.stderr).lower()
    # 0xA900, as dcmtk names it.
    assert "final find response (error: datasetdoesnotmatchsopclass)" in output
