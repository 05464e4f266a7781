"""The job queue: database rows claimed with a lease, and the workers that run them.

A worker claims the oldest due job (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several node processes share one queue; SQLite transactions
are exclusive), holds a lease it renews while working, and records the
outcome only if it still owns the job. A job whose lease ran out (its worker
died) is queued again by :meth:`JobQueue.recover`, up to ``max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node import audit
from node.db import Database, Job, Series, utcnow
from node.settings import JobSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease of (a detached copy of its row)."""

    id: int
    series_uid: str
    study_uid: str
    generation: int
    rule: str
    pipeline: str
    attempts: int
    owner: str
    patient_id: str


class RetryableError(Exception):
    """A failure worth another attempt (e.g. a transient I/O error)."""


def worker_identity() -> str:
    """A lease owner name unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


#: Why a job whose series received more instances while it ran is superseded.
OUTDATED = "instances arrived while the job ran"


def supersede(session: Session, row: Job, now: dt.datetime, reason: str = OUTDATED) -> None:
    """End ``row`` as superseded: its series has a newer generation whose job replaces it."""
    row.state = "superseded"
    row.finished_at = now
    row.lease_owner = None
    row.lease_expires_at = None
    series = session.get(Series, row.series_uid)
    audit.record(
        session,
        audit.AuditEvent.JOB_SUPERSEDED,
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        patient_id=series.patient_id if series is not None else "",
        job=row.id,
        generation=row.generation,
        reason=reason,
    )


def _outdated(session: Session, row: Job) -> bool:
    """Whether ``row``'s series has moved on to a newer generation (or is gone)."""
    series = session.get(Series, row.series_uid)
    return series is None or series.generation != row.generation


class JobQueue:
    """Claims, renews, completes and recovers jobs."""

    def __init__(self, db: Database, settings: JobSettings) -> None:
        self.db = db
        self.settings = settings

    def _lease_until(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.settings.lease_seconds)

    def claim(self, owner: str) -> ClaimedJob | None:
        """Take the oldest due queued job, or ``None`` when there is none."""
        now = utcnow()
        # Only a job whose series is complete at the job's generation: while
        # late instances arrive, or once a newer generation exists, it waits
        # (and completion supersedes it).
        due = (
            select(Job)
            .join(Series, Series.series_uid == Job.series_uid)
            .where(
                Job.state == "queued",
                Job.not_before <= now,
                Series.state == "complete",
                Series.generation == Job.generation,
            )
        )
        with self.db.read() as session:
            due_any = session.execute(due.with_only_columns(Job.id).limit(1)).first()
        if due_any is None:
            return None
        with self.db.session() as session:
            job = session.execute(
                due.order_by(Job.id).limit(1).with_for_update(skip_locked=True, of=Job)
            ).scalar_one_or_none()
            if job is None:
                return None
            job.state = "running"
            job.lease_owner = owner
            job.lease_expires_at = self._lease_until(now)
            job.attempts += 1
            job.started_at = now
            series = session.get(Series, job.series_uid)
            patient = series.patient_id if series is not None else ""
            audit.record(
                session,
                audit.AuditEvent.JOB_STARTED,
                study_uid=job.study_uid,
                series_uid=job.series_uid,
                patient_id=patient,
                actor=owner,
                job=job.id,
                rule=job.rule,
                pipeline=job.pipeline,
                attempt=job.attempts,
            )
            return ClaimedJob(
                id=job.id,
                series_uid=job.series_uid,
                study_uid=job.study_uid,
                generation=job.generation,
                rule=job.rule,
                pipeline=job.pipeline,
                attempts=job.attempts,
                owner=owner,
                patient_id=patient,
            )

    def renew(self, job: ClaimedJob) -> bool:
        """Extend the lease; ``False`` if the job is no longer ours."""
        with self.db.session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "running", Job.lease_owner == job.owner)
                .values(lease_expires_at=self._lease_until(utcnow()))
            )
            return bool(getattr(result, "rowcount", 0))

    def fail(self, job: ClaimedJob, error: str, retry: bool) -> None:
        """Record a failure: queue again with backoff, or fail for good."""
        now = utcnow()
        with self.db.session() as session:
            row = session.get(Job, job.id, with_for_update=True)
            if row is None or row.state != "running" or row.lease_owner != job.owner:
                logger.warning("lost the lease of job %d; not recording its failure", job.id)
                return
            where: audit.Subject = {
                "study_uid": job.study_uid,
                "series_uid": job.series_uid,
                "patient_id": job.patient_id,
            }
            row.error = error[:4000]
            row.lease_owner = None
            row.lease_expires_at = None
            if retry and _outdated(session, row):
                # Never claimed again (claims need the current generation).
                supersede(session, row, now)
                return
            if retry and row.attempts < self.settings.max_attempts:
                delay = min(30.0 * 2 ** (row.attempts - 1), 3600.0)
                row.state = "queued"
                row.not_before = now + dt.timedelta(seconds=delay)
                audit.record(
                    session,
                    audit.AuditEvent.JOB_RETRIED,
                    outcome=audit.Outcome.MINOR_FAILURE,
                    **where,
                    job=job.id,
                    attempt=row.attempts,
                    retry_in_seconds=delay,
                    error=error[:500],
                )
            else:
                row.state = "failed"
                row.finished_at = now
                audit.record(
                    session,
                    audit.AuditEvent.JOB_FAILED,
                    outcome=audit.Outcome.SERIOUS_FAILURE,
                    **where,
                    job=job.id,
                    rule=job.rule,
                    pipeline=job.pipeline,
                    attempts=row.attempts,
                    error=error[:500],
                )

    def recover(self) -> int:
        """Queue again the running jobs whose lease expired (their worker died)."""
        now = utcnow()
        recovered = 0
        with self.db.read() as session:
            stale_any = session.execute(
                select(Job.id).where(Job.state == "running", Job.lease_expires_at < now).limit(1)
            ).first()
        if stale_any is None:
            return 0
        with self.db.session() as session:
            stale = (
                session.execute(
                    select(Job)
                    .where(Job.state == "running", Job.lease_expires_at < now)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for row in stale:
                where: audit.Subject = {"study_uid": row.study_uid, "series_uid": row.series_uid}
                owner = row.lease_owner or ""
                row.lease_owner = None
                row.lease_expires_at = None
                if _outdated(session, row):
                    supersede(session, row, now)
                elif row.attempts >= self.settings.max_attempts:
                    row.state = "failed"
                    row.finished_at = now
                    row.error = "worker stopped while running the job (lease expired)"
                    audit.record(
                        session,
                        audit.AuditEvent.JOB_FAILED,
                        outcome=audit.Outcome.SERIOUS_FAILURE,
                        **where,
                        job=row.id,
                        attempts=row.attempts,
                        error=row.error,
                    )
                else:
                    row.state = "queued"
                    row.not_before = now
                    audit.record(
                        session,
                        audit.AuditEvent.JOB_RETRIED,
                        outcome=audit.Outcome.MINOR_FAILURE,
                        **where,
                        job=row.id,
                        attempt=row.attempts,
                        error=f"lease of {owner} expired",
                    )
                recovered += 1
        return recovered

    def release_dead_local(self, hostname: str) -> int:
        """At start-up: queue again at once the jobs of dead processes on this host.

        After a crash their leases would expire anyway; a restart need not
        wait for that. Jobs of live processes (scale-out on one host) stay.
        """
        now = utcnow()
        with self.db.session() as session:
            rows = (
                session.execute(
                    select(Job).where(Job.state == "running", Job.lease_owner.like(f"{hostname}:%"))
                )
                .scalars()
                .all()
            )
            dead = [row for row in rows if not _pid_alive(row.lease_owner or "")]
            for row in dead:
                row.lease_expires_at = now - dt.timedelta(seconds=1)
        return self.recover() if dead else 0


def _pid_alive(owner: str) -> bool:
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        # Another process with our pid and host name (containers all run as
        # pid 1) may be alive: its lease is left to expire instead.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerPool:
    """Threads that claim jobs and hand them to ``process``."""

    def __init__(
        self,
        queue: JobQueue,
        process: Callable[[ClaimedJob], None],
        count: int,
        owner: str,
        poll_seconds: float = 1.0,
    ) -> None:
        self.queue = queue
        self.process = process
        self.count = count
        self.owner = owner
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._started = 0

    def start(self) -> None:
        """Start the worker threads."""
        with self._lock:
            for _ in range(self.count):
                self._start_one()

    def _start_one(self) -> None:
        # Called with the lock held. Started before it is listed: stop() may
        # join any listed thread.
        thread = threading.Thread(target=self._loop, name=f"worker-{self._started}", daemon=True)
        self._started += 1
        thread.start()
        self._threads.append(thread)

    def abandon(self, thread: threading.Thread) -> None:
        """Replace ``thread``, stuck in a job that timed out, by a new worker.

        If the stuck job ever returns, that thread ends instead of claiming
        more work, so the pool keeps ``count`` workers.
        """
        with self._lock:
            if thread not in self._threads or self._stop.is_set():
                return
            self._threads.remove(thread)
            self._start_one()

    @property
    def alive(self) -> int:
        """Worker threads serving the queue (not counting abandoned ones)."""
        with self._lock:
            return sum(thread.is_alive() for thread in self._threads)

    def wake(self) -> None:
        """Tell idle workers that a job was queued."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the jobs in progress finish (or ``timeout``)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        with self._lock:
            self._threads.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim(self.owner)
            except Exception:
                logger.exception("cannot claim a job")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self.process(job)
            except Exception:  # the edge of a worker: never let one job kill it
                logger.exception("job %d crashed its worker loop", job.id)
            with self._lock:
                if threading.current_thread() not in self._threads:
                    return  # replaced while stuck in that job (or stopping)
