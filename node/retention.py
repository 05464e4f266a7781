"""Retention: removing spooled inputs and outputs once their work is done and old enough."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

from sqlalchemy import delete, select

from node import audit
from node.db import Database, Delivery, Instance, Job, Series, utcnow
from node.settings import RetentionSettings
from node.spool import Spool

logger = logging.getLogger(__name__)

_BUSY_JOBS = ("queued", "running")
_BUSY_DELIVERIES = ("pending", "sending")


class Retention:
    """Purges series completed more than ``keep_days`` ago with nothing left to do."""

    def __init__(
        self, db: Database, spool: Spool, outputs_dir: Path, settings: RetentionSettings
    ) -> None:
        self.db = db
        self.spool = spool
        self.outputs_dir = outputs_dir
        self.settings = settings

    def sweep(self, now: dt.datetime | None = None) -> int:
        """Purge what is due; ``keep_days = 0`` keeps everything."""
        if self.settings.keep_days <= 0:
            return 0
        cutoff = (now or utcnow()) - dt.timedelta(days=self.settings.keep_days)
        purged = 0
        with self.db.session() as session:
            candidates = (
                session.execute(
                    select(Series)
                    .where(Series.state == "complete", Series.completed_at < cutoff)
                    .limit(200)
                )
                .scalars()
                .all()
            )
            for series in candidates:
                jobs = list(
                    session.execute(
                        select(Job).where(Job.series_uid == series.series_uid)
                    ).scalars()
                )
                if any(j.state in _BUSY_JOBS for j in jobs):
                    continue
                job_ids = [j.id for j in jobs]
                busy = session.execute(
                    select(Delivery.id)
                    .where(Delivery.job_id.in_(job_ids), Delivery.state.in_(_BUSY_DELIVERIES))
                    .limit(1)
                ).first()
                if busy:
                    continue
                self.spool.remove_series(series.study_uid, series.series_uid)
                for job in jobs:
                    shutil.rmtree(self.outputs_dir / f"job-{job.id}", ignore_errors=True)
                session.execute(delete(Instance).where(Instance.series_uid == series.series_uid))
                series.state = "purged"
                audit.record(
                    session,
                    audit.AuditEvent.SERIES_PURGED,
                    study_uid=series.study_uid,
                    series_uid=series.series_uid,
                    patient_id=series.patient_id,
                    keep_days=self.settings.keep_days,
                )
                purged += 1
        if purged:
            logger.info("retention purged %d series", purged)
        return purged
