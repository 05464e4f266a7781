"""A slice the QA gate doubts: passed through unchanged, flagged in its output and the audit log.

The real ct-denoise pipeline and gate, with a method that invents a lesion
in one slice, run by the node's own processor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import select

from node import audit
from node import provenance as prov
from node.db import Delivery
from node.jobs import JobQueue
from node.processing import PipelineCache, Processor
from pipelines.base import FloatArray, ParamValue, Pipeline, PipelineEntry, Registry
from pipelines.ct_denoise.params import parse_params
from pipelines.ct_denoise.pipeline import ClassicalDenoiser, CTDenoisePipeline
from tests.processing_setup import match_all_settings, queue_job

#: The slice (in the volume's order) the method invents a lesion in.
TAMPERED = 1


class InventsALesion(ClassicalDenoiser):
    """Non-local means, then a 10 mm, +80 HU disc added to one slice."""

    def denoise(self, slices: FloatArray, sigma_hu: FloatArray) -> FloatArray:
        out = super().denoise(slices, sigma_hu)
        rows, cols = np.ogrid[: out.shape[1], : out.shape[2]]
        disc = (rows - 70) ** 2 + (cols - 60) ** 2 <= 7.5**2  # 0.66 mm pixels
        out[TAMPERED][disc] += 80.0
        return out


def _factory(params: Mapping[str, ParamValue]) -> Pipeline:
    return CTDenoisePipeline(InventsALesion(), parse_params({**params, "method": "classical"}))


def test_flagged_slice_passes_through_and_is_audited(tmp_path: Path) -> None:
    registry = Registry()
    registry.register(PipelineEntry("ct-denoise", _factory, ("CT",), "invents a lesion"))
    settings = match_all_settings(tmp_path, registry, {"ct": "ct-denoise"})
    queued = queue_job(tmp_path, "ct", "ct-denoise", slices=3, noise_hu=20.0)
    queue = JobQueue(queued.db, settings.jobs)
    outputs = tmp_path / "out"
    processor = Processor(
        queued.db, settings, queued.spool, queue, PipelineCache(registry, settings), outputs, None
    )
    job = queue.claim("test")
    assert job is not None
    processor.process(job)

    with queued.db.read() as session:
        flags = audit.query(session, events=["qa-flagged"])
        succeeded = audit.query(session, events=["job-succeeded"])
        paths = session.scalars(select(Delivery.path)).all()
    assert len(flags) == 1 and len(succeeded) == 1
    flag = json.loads(flags[0].detail)
    assert flag["flagged_slices"] == [TAMPERED]
    assert flags[0].series_uid == job.series_uid
    assert json.loads(succeeded[0].detail)["flagged"] == 1

    sources = {str(ds.SOPInstanceUID): ds for ds in queued.series}
    verdicts = []
    for path in sorted(paths):
        out = pydicom.dcmread(outputs.parent / path)
        source = sources[str(out.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        slice_qa = json.loads(prov.read_private(out, prov.PRIVATE_SLICE_QA))
        assert prov.read_private(out, prov.PRIVATE_FLAGGED_COUNT) == 1  # of the series
        series_qa = json.loads(prov.read_private(out, prov.PRIVATE_SERIES_QA))
        assert series_qa["flagged_slices"] == [TAMPERED]
        verdict = prov.read_private(out, prov.PRIVATE_QA_VERDICT)
        assert verdict == ("PASSED" if slice_qa["passed"] else "FLAGGED")
        changed = not np.array_equal(out.pixel_array, source.pixel_array)
        verdicts.append((slice_qa["passed"], changed))
        if not slice_qa["passed"]:
            assert slice_qa["reasons"], "a flagged slice names its reasons"
            assert "failed the QA gate" in str(out.DerivationDescription)
    # The flagged slice went out as its input; the others were denoised.
    assert sorted(verdicts) == [(False, False), (True, True), (True, True)]
