"""A node's processing side without its DICOM side: settings, index and a queued job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.db import Database, Job, Series, make_engine, utcnow
from node.ingest import Ingest
from node.samples import CT_128, make_series
from node.settings import Settings, parse_settings
from node.spool import Spool
from pipelines.base import Registry
from tests.conftest import encode_explicit_le


def match_all_settings(
    tmp_path: Path, registry: Registry, rules: Mapping[str, str], **tables: Any
) -> Settings:
    """Settings with one destination and a match-all rule per ``rules`` item (name: pipeline)."""
    return parse_settings(
        {
            "node": {"data_dir": str(tmp_path)},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
            ],
            "rules": [
                {"name": name, "pipeline": pipeline, "destinations": ["pacs"], "match": {}}
                for name, pipeline in rules.items()
            ],
            **tables,
        },
        registry=registry,
    )


@dataclass
class QueuedJob:
    """An index and spool holding one complete CT series with one queued job."""

    db: Database
    spool: Spool
    series: list[Dataset]


def queue_job(
    tmp_path: Path, rule: str, pipeline: str, slices: int = 2, noise_hu: float = 0.0
) -> QueuedJob:
    """Receive a ``slices``-slice CT series, mark it complete and queue its job."""
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    spool = Spool(tmp_path / "spool")
    ingest = Ingest(db, spool, lambda ds: False)
    series = make_series(CT_128, slices=slices, noise_hu=noise_hu)
    for ds in series:
        ingest.accept(ds, encode_explicit_le(ds), ExplicitVRLittleEndian, "SCU")
    now = utcnow()
    with db.session() as session:
        row = session.get(Series, str(series[0].SeriesInstanceUID))
        assert row is not None
        row.state = "complete"
        session.add(
            Job(
                series_uid=row.series_uid,
                study_uid=row.study_uid,
                generation=1,
                rule=rule,
                pipeline=pipeline,
                not_before=now,
                created_at=now,
            )
        )
    return QueuedJob(db, spool, series)
