"""Delivery claims: a claim given back by recovery no longer records its outcome."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import select, update

from node import audit
from node.db import Database, Delivery, Job, make_engine, utcnow
from node.delivery import Dispatcher
from node.dicom.scu import StoreResult
from node.settings import parse_settings


def test_a_claim_taken_over_after_recovery_does_not_record(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "node": {"data_dir": str(tmp_path)},
            "destinations": [{"type": "folder", "name": "share", "path": str(tmp_path / "out")}],
            "rules": [{"name": "r", "pipeline": "ct-denoise", "destinations": ["share"]}],
        }
    )
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    with db.session() as session:
        session.add(
            Job(
                id=1,
                series_uid="1.2.3",
                study_uid="1.2",
                generation=1,
                rule="r",
                pipeline="ct-denoise",
                state="succeeded",
                not_before=utcnow(),
                created_at=utcnow(),
            )
        )
        session.flush()
        session.add(
            Delivery(
                job_id=1,
                destination="share",
                sop_instance_uid="1.2.3.9.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                study_uid="1.2",
                source_series_uid="1.2.3",
                series_uid="1.2.3.9",
                path="outputs/job-1/1.dcm",
                state="pending",
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
        )
    dispatcher = Dispatcher(db, settings, tmp_path)
    [slow] = dispatcher._claim()
    # The first sender outlives its claim: recovery gives the row back and a
    # second sender claims it.
    with db.session() as session:
        session.execute(update(Delivery).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
    assert dispatcher.recover() == 1
    [fresh] = dispatcher._claim()
    dispatcher._record("share", [slow], [StoreResult(None, "timed out")])
    with db.read() as session:
        row = session.execute(select(Delivery)).scalar_one()
        assert (row.state, row.attempts) == ("sending", 0)
    dispatcher._record("share", [fresh], [StoreResult(0x0000)])
    with db.read() as session:
        row = session.execute(select(Delivery)).scalar_one()
        assert (row.state, row.attempts) == ("sent", 1)
        # A copy to a folder leaves the node's DICOM world: an export.
        [exported] = audit.query(session, events=["export", "instances-sent"])
    assert exported.event == "export" and exported.output_series_uid == "1.2.3.9"
    assert json.loads(exported.detail) == {"destination": "share", "instances": 1}
    db.close()
