"""The job queue and completion on SQLite and PostgreSQL: claims, leases, recovery."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from sqlalchemy import func, select, update

from node import audit
from node.completion import Completion
from node.db import AuditRecord, Database, Instance, Job, Series, make_engine, utcnow
from node.jobs import JobQueue
from node.routing import Router
from node.samples import CT_128, make_series, write_series
from node.settings import CompletionSettings, JobSettings, Rule
from node.spool import Spool


def add_jobs(db: Database, count: int) -> None:
    """``count`` queued jobs, each for its own complete series."""
    now = utcnow()
    with db.session() as session:
        for i in range(count):
            session.add(
                Series(
                    series_uid=f"1.2.{i}",
                    study_uid="1.2",
                    state="complete",
                    generation=1,
                    instance_count=1,
                    first_received_at=now,
                    last_received_at=now,
                )
            )
            session.add(
                Job(
                    series_uid=f"1.2.{i}",
                    study_uid="1.2",
                    generation=1,
                    rule="r",
                    pipeline="ct-denoise",
                    not_before=now,
                    created_at=now,
                )
            )


def events(db: Database, name: str) -> list[AuditRecord]:
    with db.session() as session:
        return audit.query(session, events=[name])


def test_each_job_is_claimed_once_by_concurrent_workers(database_url: str) -> None:
    db = Database(make_engine(database_url))
    add_jobs(db, 30)
    queue = JobQueue(db, JobSettings())
    claimed: list[int] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        while (job := queue.claim(owner)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"host:{i}:w",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 31))
    assert len(events(db, "job-started")) == 30
    db.close()


def test_expired_lease_is_recovered_then_failed_after_max_attempts(database_url: str) -> None:
    db = Database(make_engine(database_url))
    add_jobs(db, 1)
    queue = JobQueue(db, JobSettings(max_attempts=2, lease_seconds=60))
    for attempt in (1, 2):
        job = queue.claim("host:1:a")
        assert job is not None and job.attempts == attempt
        assert queue.renew(job)
        # The worker dies: its lease runs out.
        with db.session() as session:
            session.execute(update(Job).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
        assert queue.recover() == 1
        assert not queue.renew(job)  # the lease is no longer this worker's
    with db.session() as session:
        row = session.get(Job, 1)
        assert row is not None and row.state == "failed"
        assert "lease expired" in (row.error or "")
    assert len(events(db, "job-retried")) == 1
    assert len(events(db, "job-failed")) == 1
    db.close()


def test_jobs_wait_while_their_series_receives_and_yield_to_a_newer_generation(
    database_url: str,
) -> None:
    db = Database(make_engine(database_url))
    add_jobs(db, 1)
    queue = JobQueue(db, JobSettings())
    with db.session() as session:
        session.execute(update(Series).values(state="receiving", generation=2))
    assert queue.claim("host:1:a") is None  # a late instance arrived: not yet
    with db.session() as session:
        session.execute(update(Series).values(state="complete"))
    assert queue.claim("host:1:a") is None  # generation 2 is due, not this job
    db.close()


def test_failed_attempt_waits_for_its_backoff(database_url: str) -> None:
    db = Database(make_engine(database_url))
    add_jobs(db, 1)
    queue = JobQueue(db, JobSettings(max_attempts=3))
    job = queue.claim("host:1:a")
    assert job is not None
    queue.fail(job, "disk hiccup", retry=True)
    assert queue.claim("host:1:a") is None  # not due yet
    with db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.state == "queued"
        assert row.not_before > utcnow() + dt.timedelta(seconds=20)
    queue.fail(job, "late", retry=True)  # no longer running: not recorded again
    assert len(events(db, "job-retried")) == 1
    db.close()


def test_completion_queues_each_rule_once_and_ignores_own_outputs(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(make_engine(database_url))
    spool = Spool(tmp_path / "spool")
    ds = make_series(CT_128, slices=1)[0]
    path = write_series([ds], spool.root / "x")[0]
    old = utcnow() - dt.timedelta(seconds=60)
    with db.session() as session:
        for uid, origin in (("1.2.1", "external"), ("1.2.2", "radnode")):
            session.add(
                Series(
                    series_uid=uid,
                    study_uid="1.2",
                    origin=origin,
                    instance_count=1,
                    first_received_at=old,
                    last_received_at=old,
                )
            )
            session.add(
                Instance(
                    sop_instance_uid=f"{uid}.1",
                    sop_class_uid=ds.SOPClassUID,
                    study_uid="1.2",
                    series_uid=uid,
                    path=str(path.relative_to(spool.root)),
                    transfer_syntax="1.2.840.10008.1.2.1",
                    size=1,
                    calling_ae="X",
                    received_at=old,
                )
            )
    rules = [
        Rule(name="ct", pipeline="ct-denoise", destinations=["p"], match={"Modality": "CT"}),
        Rule(name="mr", pipeline="mr-accel", destinations=["p"], match={"Modality": "MR"}),
    ]
    completion = Completion(db, spool, Router(rules), CompletionSettings(quiet_seconds=5))
    assert completion.sweep() == 2
    assert completion.sweep() == 0  # already complete: nothing repeats
    with db.session() as session:
        jobs = session.execute(select(Job.series_uid, Job.rule)).all()
        states = dict(session.execute(select(Series.series_uid, Series.state)).all())
        ignored = session.execute(
            select(func.count()).where(AuditRecord.event == "series-ignored")
        ).scalar_one()
    assert [tuple(j) for j in jobs] == [("1.2.1", "ct")]
    assert states == {"1.2.1": "complete", "1.2.2": "complete"}
    assert ignored == 1
    db.close()


def test_a_job_outdated_while_it_ran_is_superseded_not_queued_again(database_url: str) -> None:
    """Late instances while a job runs: its retry would never be claimed (old generation)."""
    db = Database(make_engine(database_url))
    add_jobs(db, 2)
    queue = JobQueue(db, JobSettings())
    failing = queue.claim("w1")
    stalled = queue.claim("w2")
    assert failing is not None and stalled is not None
    with db.session() as session:
        session.execute(update(Series).values(generation=2))
        session.execute(
            update(Job)
            .where(Job.id == stalled.id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    queue.fail(failing, "pipeline error", retry=True)
    assert queue.recover() == 1
    with db.session() as session:
        states = sorted(session.execute(select(Job.state)).scalars())
    assert states == ["superseded", "superseded"]
    assert sorted(r.series_uid for r in events(db, "job-superseded")) == ["1.2.0", "1.2.1"]
    assert events(db, "job-retried") == []
    db.close()
