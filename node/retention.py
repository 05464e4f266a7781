"""Retention: removing spooled inputs and outputs once their work is done and old enough.

Files are deleted outside any database transaction (the index stays
writable meanwhile), and only the files the index knew when the purge began:
an instance arriving for the series during the purge is kept and starts a
new generation as usual.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from contextlib import suppress
from pathlib import Path

from sqlalchemy import delete, select, update

from node import audit
from node.db import Database, Delivery, Instance, Job, Series, utcnow
from node.settings import RetentionSettings
from node.spool import Spool

logger = logging.getLogger(__name__)

# Deliveries that failed for good keep their data until an operator runs
# `radnode deliveries retry` (or gives them up), so they are "busy" too.
_BUSY_JOBS = ("queued", "running")
_BUSY_DELIVERIES = ("pending", "sending", "failed")


class Retention:
    """Purges series completed more than ``keep_days`` ago with nothing left to do."""

    def __init__(
        self, db: Database, spool: Spool, outputs_dir: Path, settings: RetentionSettings
    ) -> None:
        self.db = db
        self.spool = spool
        self.outputs_dir = outputs_dir
        self.settings = settings

    def sweep(self, now: dt.datetime | None = None, batch: int = 20) -> int:
        """Purge everything due, ``batch`` series per transaction; ``keep_days = 0`` keeps all."""
        if self.settings.keep_days <= 0:
            return 0
        cutoff = (now or utcnow()) - dt.timedelta(days=self.settings.keep_days)
        purged = 0
        while claimed := self._claim(cutoff, batch):
            for series_uid, study_uid, paths, job_ids in claimed:
                for relative in paths:
                    self.spool.path(relative).unlink(missing_ok=True)
                for job_id in job_ids:
                    shutil.rmtree(self.outputs_dir / f"job-{job_id}", ignore_errors=True)
                with suppress(OSError):  # only when empty: a late instance may be there
                    (self.spool.root / study_uid / series_uid).rmdir()
                purged += self._finish(series_uid, paths)
        if purged:
            logger.info("retention purged %d series", purged)
        return purged

    def recover(self) -> int:
        """Make series a stopped process left half purged due again; return how many."""
        with self.db.session() as session:
            result = session.execute(
                update(Series).where(Series.state == "purging").values(state="complete")
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _claim(
        self, cutoff: dt.datetime, batch: int
    ) -> list[tuple[str, str, list[str], list[int]]]:
        """Mark the oldest due series with nothing left to do ``purging``; return their files."""
        busy_job = (
            select(Job.id)
            .where(Job.series_uid == Series.series_uid, Job.state.in_(_BUSY_JOBS))
            .exists()
        )
        busy_delivery = (
            select(Delivery.id)
            .where(
                Delivery.source_series_uid == Series.series_uid,
                Delivery.state.in_(_BUSY_DELIVERIES),
            )
            .exists()
        )
        claimed = []
        with self.db.session() as session:
            due = session.execute(
                select(Series)
                .where(
                    Series.state == "complete",
                    Series.completed_at < cutoff,
                    ~busy_job,
                    ~busy_delivery,
                )
                .order_by(Series.completed_at)
                .limit(batch)
                .with_for_update(skip_locked=True, of=Series)
            ).scalars()
            for series in due.all():
                series.state = "purging"
                paths = list(
                    session.execute(
                        select(Instance.path).where(Instance.series_uid == series.series_uid)
                    ).scalars()
                )
                job_ids = list(
                    session.execute(
                        select(Job.id).where(Job.series_uid == series.series_uid)
                    ).scalars()
                )
                claimed.append((series.series_uid, series.study_uid, paths, job_ids))
        return claimed

    def _finish(self, series_uid: str, paths: list[str]) -> int:
        """Drop the purged instances from the index and record the purge."""
        with self.db.session() as session:
            session.execute(
                delete(Instance).where(Instance.series_uid == series_uid, Instance.path.in_(paths))
            )
            done = session.execute(
                update(Series)
                .where(Series.series_uid == series_uid, Series.state == "purging")
                .values(state="purged")
            )
            series = session.get(Series, series_uid)
            if series is None:
                return 0
            audit.record(
                session,
                audit.AuditEvent.SERIES_PURGED,
                study_uid=series.study_uid,
                series_uid=series_uid,
                patient_id=series.patient_id,
                keep_days=self.settings.keep_days,
                instances=len(paths),
                late_instances_kept=not getattr(done, "rowcount", 0),
            )
        return 1
