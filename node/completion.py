"""Series completion: a series is complete after ``quiet_seconds`` without a new instance.

The state lives in the index, and one transaction marks a series complete,
queues its jobs and writes the audit records, so a restart neither loses nor
repeats a completion. A series the node produced itself is completed but
never routed (loop prevention).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from pydicom import Dataset, dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from node import audit
from node.db import Database, Instance, Job, Series, utcnow
from node.jobs import supersede
from node.routing import Router
from node.settings import CompletionSettings
from node.spool import Spool

logger = logging.getLogger(__name__)


class Completion:
    """Finds quiet series, routes them and queues their jobs."""

    def __init__(
        self,
        db: Database,
        spool: Spool,
        router: Router,
        settings: CompletionSettings,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.router = router
        self.settings = settings
        self.on_queued = on_queued

    def sweep(self, now: dt.datetime | None = None) -> int:
        """Complete every series quiet since ``quiet_seconds``; return how many."""
        now = now or utcnow()
        cutoff = now - dt.timedelta(seconds=self.settings.quiet_seconds)
        queued = 0
        completed = 0
        with self.db.read() as session:
            due_any = session.execute(
                select(Series.series_uid)
                .where(Series.state == "receiving", Series.last_received_at <= cutoff)
                .limit(1)
            ).first()
        if due_any is None:
            return 0
        with self.db.session() as session:
            due = (
                session.execute(
                    select(Series)
                    .where(Series.state == "receiving", Series.last_received_at <= cutoff)
                    .order_by(Series.last_received_at)
                    .limit(50)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for series in due:
                try:
                    with session.begin_nested():  # one bad series must not block the rest
                        queued += self._complete(session, series, now)
                    completed += 1
                except Exception:  # the edge of one series' completion; retried next sweep
                    logger.exception(
                        "completing a series failed", extra={"series": series.series_uid}
                    )
        if queued:
            self.on_queued()
        return completed

    def _representative(self, session: Session, series_uid: str) -> Dataset | None:
        first = session.execute(
            select(Instance)
            .where(Instance.series_uid == series_uid)
            .order_by(Instance.received_at)
            .limit(1)
        ).scalar_one_or_none()
        if first is None:
            return None
        try:
            return dcmread(self.spool.path(first.path), stop_before_pixels=True)
        except Exception:
            logger.exception("cannot read a spooled instance", extra={"series": series_uid})
            return None

    def _complete(self, session: Session, series: Series, now: dt.datetime) -> int:
        series.state = "complete"
        series.completed_at = now
        where: audit.Subject = {
            "study_uid": series.study_uid,
            "series_uid": series.series_uid,
            "patient_id": series.patient_id,
        }
        if series.origin == "radnode":
            audit.record(
                session,
                audit.AuditEvent.SERIES_COMPLETED,
                **where,
                instances=series.instance_count,
                generation=series.generation,
                rules=[],
            )
            audit.record(
                session,
                audit.AuditEvent.SERIES_IGNORED,
                **where,
                reason="produced by radnode; never routed again (loop prevention)",
            )
            return 0
        ds = self._representative(session, series.series_uid)
        if ds is None:
            audit.record(
                session,
                audit.AuditEvent.SERIES_IGNORED,
                outcome=audit.Outcome.SERIOUS_FAILURE,
                **where,
                reason="no stored instance of the series could be read; not routed",
            )
            return 0
        rules = self.router.matching(ds)
        audit.record(
            session,
            audit.AuditEvent.SERIES_COMPLETED,
            **where,
            instances=series.instance_count,
            generation=series.generation,
            rules=[r.name for r in rules],
        )
        # Queued jobs of earlier generations would only redo part of the work.
        for old in session.execute(
            select(Job).where(
                Job.series_uid == series.series_uid,
                Job.state == "queued",
                Job.generation < series.generation,
            )
        ).scalars():
            supersede(session, old, now, "a newer generation of the series completed")
        queued = 0
        for rule in rules:
            exists = session.execute(
                select(Job.id).where(
                    Job.series_uid == series.series_uid,
                    Job.rule == rule.name,
                    Job.generation == series.generation,
                )
            ).first()
            if exists:
                continue
            job = Job(
                series_uid=series.series_uid,
                study_uid=series.study_uid,
                generation=series.generation,
                rule=rule.name,
                pipeline=rule.pipeline,
                state="queued",
                attempts=0,
                not_before=now,
                created_at=now,
            )
            session.add(job)
            session.flush()
            audit.record(
                session,
                audit.AuditEvent.JOB_QUEUED,
                **where,
                job=job.id,
                rule=rule.name,
                pipeline=rule.pipeline,
                generation=series.generation,
            )
            queued += 1
        logger.info(
            "series complete: %d instances, %d job(s) queued",
            series.instance_count,
            queued,
            extra={"series": series.series_uid},
        )
        return queued
