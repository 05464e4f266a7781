"""Retention: what is purged, what is kept, and that late instances survive a purge."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select

from node import audit
from node.db import Database, Delivery, Instance, Job, Series, make_engine, utcnow
from node.retention import Retention
from node.settings import RetentionSettings
from node.spool import Spool

OLD = utcnow() - dt.timedelta(days=30)


def stock(db: Database, spool: Spool, outputs: Path, uid: str, delivery_state: str) -> Path:
    """A completed series with one instance, a job, its output folder and a delivery."""
    relative = spool.relative_path("1.2", uid, f"{uid}.1")
    spool.write(relative, [b"x"])
    with db.session() as session:
        session.add(
            Series(
                series_uid=uid,
                study_uid="1.2",
                state="complete",
                instance_count=1,
                first_received_at=OLD,
                last_received_at=OLD,
                completed_at=OLD,
            )
        )
        session.add(
            Instance(
                sop_instance_uid=f"{uid}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid="1.2",
                series_uid=uid,
                path=relative,
                transfer_syntax="1.2.840.10008.1.2.1",
                size=1,
                calling_ae="X",
                received_at=OLD,
            )
        )
        job = Job(
            series_uid=uid,
            study_uid="1.2",
            generation=1,
            rule="r",
            pipeline="ct-denoise",
            state="succeeded",
            not_before=OLD,
            created_at=OLD,
        )
        session.add(job)
        session.flush()
        (outputs / f"job-{job.id}").mkdir(parents=True)
        (outputs / f"job-{job.id}" / "out.dcm").write_bytes(b"y")
        session.add(
            Delivery(
                job_id=job.id,
                destination="pacs",
                sop_instance_uid=f"{uid}.9",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                study_uid="1.2",
                source_series_uid=uid,
                series_uid=f"{uid}.9",
                path=f"outputs/job-{job.id}/out.dcm",
                state=delivery_state,
                next_attempt_at=OLD,
                created_at=OLD,
            )
        )
        return outputs / f"job-{job.id}"


def test_done_series_are_purged_and_failed_deliveries_keep_theirs(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(make_engine(database_url))
    spool = Spool(tmp_path / "spool")
    outputs = tmp_path / "outputs"
    done_job = stock(db, spool, outputs, "1.2.1", "sent")
    kept_job = stock(db, spool, outputs, "1.2.2", "failed")
    # A late instance of the done series reaches the spool during the purge.
    late = spool.path(spool.relative_path("1.2", "1.2.1", "1.2.1.5"))
    spool.write(spool.relative_path("1.2", "1.2.1", "1.2.1.5"), [b"late"])

    retention = Retention(db, spool, outputs, RetentionSettings(keep_days=7))
    assert retention.sweep() == 1
    assert not spool.path(spool.relative_path("1.2", "1.2.1", "1.2.1.1")).exists()
    assert not done_job.exists()
    assert late.exists()
    assert kept_job.exists()
    assert spool.path(spool.relative_path("1.2", "1.2.2", "1.2.2.1")).exists()
    with db.session() as session:
        states = dict(session.execute(select(Series.series_uid, Series.state)).all())
        purged = audit.query(session, events=["series-purged"])
    assert states == {"1.2.1": "purged", "1.2.2": "complete"}
    assert [r.series_uid for r in purged] == ["1.2.1"]
    assert retention.sweep() == 0
    db.close()


def test_keep_days_zero_keeps_everything(database_url: str, tmp_path: Path) -> None:
    db = Database(make_engine(database_url))
    spool = Spool(tmp_path / "spool")
    stock(db, spool, tmp_path / "outputs", "1.2.1", "sent")
    assert Retention(db, spool, tmp_path / "outputs", RetentionSettings(keep_days=0)).sweep() == 0
    db.close()


def test_held_series_do_not_stop_the_purge_of_others(database_url: str, tmp_path: Path) -> None:
    """More held series than a batch: every due series is still purged, batch after batch."""
    db = Database(make_engine(database_url))
    spool = Spool(tmp_path / "spool")
    outputs = tmp_path / "outputs"
    for i in range(5):
        stock(db, spool, outputs, f"1.2.1{i}", "failed")
    for i in range(7):
        stock(db, spool, outputs, f"1.2.2{i}", "sent")
    retention = Retention(db, spool, outputs, RetentionSettings(keep_days=7))
    assert retention.sweep(batch=3) == 7
    with db.session() as session:
        states = dict(session.execute(select(Series.series_uid, Series.state)).all())
    assert sorted(uid for uid, state in states.items() if state == "purged") == [
        f"1.2.2{i}" for i in range(7)
    ]
    db.close()


def test_a_purge_cut_off_by_a_stop_is_done_after_the_next_start(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(make_engine(database_url))
    spool = Spool(tmp_path / "spool")
    outputs = tmp_path / "outputs"
    job_dir = stock(db, spool, outputs, "1.2.1", "sent")
    with db.session() as session:
        row = session.get(Series, "1.2.1")
        assert row is not None
        row.state = "purging"  # claimed, then the process stopped
    retention = Retention(db, spool, outputs, RetentionSettings(keep_days=7))
    assert retention.sweep() == 0
    assert retention.recover() == 1
    assert retention.sweep() == 1
    assert not job_dir.exists()
    db.close()
