"""Running one job: load the series, run its pipeline, write outputs, queue deliveries.

The job's success, its deliveries and its audit records are committed in one
transaction after the output files are durable, so a crash at any point
leaves either nothing (the job runs again and rewrites the same files under
the same UIDs) or everything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy import select

from node import audit
from node.db import Database, Delivery, Instance, Job, Series, utcnow
from node.errors import ConfigError, JobError
from node.imaging import load_volume
from node.jobs import ClaimedJob, JobQueue, RetryableError, supersede
from node.output import JobContext, OutputOptions, build_outputs, write_outputs
from node.settings import Settings
from node.spool import Spool
from pipelines.base import Pipeline, PipelineError, Registry

logger = logging.getLogger(__name__)

Signer = Callable[[Dataset], None]


class PipelineCache:
    """One built pipeline per rule (weights are loaded once), used under a lock."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._pipelines: dict[str, tuple[Pipeline, threading.Lock]] = {}
        self._builds: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, rule_name: str) -> tuple[Pipeline, threading.Lock]:
        """The pipeline of ``rule_name``, built on first use.

        A build (seconds) holds only its own rule's build lock: jobs of
        other rules, and :meth:`discard`, do not wait for it.
        """
        rule = self.settings.rule(rule_name)
        with self._lock:
            build = self._builds.setdefault(rule_name, threading.Lock())
        with build:
            with self._lock:
                found = self._pipelines.get(rule_name)
            if found is not None:
                return found
            built = (self.registry.create(rule.pipeline, rule.params), threading.Lock())
            with self._lock:
                # A build that hung and was discarded meanwhile stores nothing.
                if self._builds.get(rule_name) is build:
                    self._pipelines[rule_name] = built
            return built

    def discard(self, rule_name: str) -> None:
        """Forget the pipeline of ``rule_name``; the next job builds a new one.

        For a pipeline that hung: its thread keeps the old instance and lock.
        """
        with self._lock:
            self._pipelines.pop(rule_name, None)
            # A build still running (hung) keeps its own lock; the next job
            # builds with a new one rather than waiting for it.
            self._builds.pop(rule_name, None)


class Processor:
    """Turns a claimed job into durable outputs and pending deliveries."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        spool: Spool,
        queue: JobQueue,
        pipelines: PipelineCache,
        outputs_dir: Path,
        signer: Signer | None,
        on_delivery: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.spool = spool
        self.queue = queue
        self.pipelines = pipelines
        self.outputs_dir = outputs_dir
        self.signer = signer
        self.on_delivery = on_delivery
        #: Told which worker thread is stuck in a job that timed out (set by
        #: the worker pool's owner: the pool is built from this processor).
        self.on_hung: Callable[[threading.Thread], None] = lambda thread: None

    def process(self, job: ClaimedJob) -> None:
        """Run ``job``; every outcome is recorded in the index and the audit log."""
        extra = {"job": job.id, "series": job.series_uid}
        logger.info("job %d started (%s)", job.id, job.pipeline, extra=extra)
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._watch, args=(job, stop, threading.current_thread()), daemon=True
        )
        heartbeat.start()
        try:
            self._run(job)
        except (JobError, PipelineError, ConfigError) as exc:
            # Bad input, a pipeline that refuses it, or a rule no longer in
            # settings.toml: another attempt would fail the same way.
            logger.error("job %d failed: %s", job.id, exc, extra=extra)
            self.queue.fail(job, str(exc), retry=False)
        except (RetryableError, OSError) as exc:
            logger.warning("job %d failed, will retry: %s", job.id, exc, extra=extra)
            self.queue.fail(job, f"{type(exc).__name__}: {exc}", retry=True)
        except Exception as exc:
            logger.exception("job %d failed unexpectedly", job.id, extra=extra)
            self.queue.fail(job, f"{type(exc).__name__}: {exc}", retry=True)
        finally:
            stop.set()
            heartbeat.join()

    def _watch(self, job: ClaimedJob, stop: threading.Event, worker: threading.Thread) -> None:
        """Renew the job's lease while it runs; give up on it past the timeout."""
        settings = self.queue.settings
        interval = max(settings.lease_seconds / 3.0, 1.0)
        deadline = time.monotonic() + settings.timeout_seconds if settings.timeout_seconds else None
        while True:
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            if stop.wait(max(wait, 0.0)):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._time_out(job, worker)
                return
            try:
                if not self.queue.renew(job):
                    return
            except Exception:
                logger.exception("cannot renew the lease of job %d", job.id)

    def _time_out(self, job: ClaimedJob, worker: threading.Thread) -> None:
        """Fail a job whose pipeline does not return, and replace its worker.

        A thread cannot be stopped from outside: the stuck one keeps its
        pipeline instance, and whatever it returns later is discarded (the
        job's lease is no longer its own). The rule's next job builds a new
        pipeline instance, and a new worker takes the stuck one's place.
        """
        timeout = self.queue.settings.timeout_seconds
        logger.error(
            "job %d still running after %.0f s: failed, its worker replaced",
            job.id,
            timeout,
            extra={"job": job.id, "series": job.series_uid},
        )
        self.pipelines.discard(job.rule)
        try:
            self.queue.fail(job, f"timed out: still running after {timeout:.0f} s", retry=True)
        except Exception:
            # The lease then runs out and the job is queued again that way.
            logger.exception("cannot record the time-out of job %d", job.id)
        self.on_hung(worker)

    def _load_sources(self, job: ClaimedJob) -> list[Dataset]:
        with self.db.read() as session:
            rows = (
                session.execute(select(Instance).where(Instance.series_uid == job.series_uid))
                .scalars()
                .all()
            )
            paths = [self.spool.path(r.path) for r in rows]
        if not paths:
            raise JobError(f"series of job {job.id} has no stored instances")
        return [dcmread(p) for p in paths]

    def _run(self, job: ClaimedJob) -> None:
        rule = self.settings.rule(job.rule)
        sources = self._load_sources(job)
        volume, ordered = load_volume(sources)
        pipeline, lock = self.pipelines.get(job.rule)
        with lock:
            result = pipeline.run(volume)
        options = OutputOptions(
            kind=rule.output,
            label=rule.label,
            content_qualification=self.settings.node.content_qualification,
            series_number_offset=rule.series_number_offset,
            description_marker=rule.description_marker,
            uid_root=self.settings.node.uid_root,
        )
        context = JobContext(job_id=job.id, rule=rule.name, pipeline=rule.pipeline)
        outputs = build_outputs(ordered, result, context, options)
        # A folder per job: a superseded job still writing cannot overwrite
        # the files a newer generation's deliveries send.
        paths = write_outputs(outputs, self.outputs_dir / f"job-{job.id}", self.signer)
        self._succeed(job, outputs, paths, result.flagged_slices, result.model.version)

    def _succeed(
        self,
        job: ClaimedJob,
        outputs: list[Dataset],
        paths: list[Path],
        flagged: list[int],
        model_version: str,
    ) -> None:
        rule = self.settings.rule(job.rule)
        now = utcnow()
        where: audit.Subject = {
            "study_uid": job.study_uid,
            "series_uid": job.series_uid,
            "patient_id": job.patient_id,
        }
        with self.db.session() as session:
            row = session.get(Job, job.id, with_for_update=True)
            if row is None or row.state != "running" or row.lease_owner != job.owner:
                logger.warning("lost the lease of job %d; its outputs are not delivered", job.id)
                return
            series = session.get(Series, job.series_uid, with_for_update=True)
            if series is None or series.generation != job.generation or series.state != "complete":
                # Instances arrived while the job ran: its outputs are
                # incomplete; the next generation's job replaces them.
                supersede(session, row, now)
                return
            output_series = str(outputs[0].SeriesInstanceUID)
            where["output_series_uid"] = output_series
            row.state = "succeeded"
            row.finished_at = now
            row.lease_owner = None
            row.lease_expires_at = None
            row.error = None
            row.output_series_uid = output_series
            row.output_count = len(outputs)
            row.flagged_count = len(flagged)
            for destination in rule.destinations:
                for ds, path in zip(outputs, paths, strict=True):
                    session.add(
                        Delivery(
                            job_id=job.id,
                            destination=destination,
                            sop_instance_uid=str(ds.SOPInstanceUID),
                            sop_class_uid=str(ds.SOPClassUID),
                            study_uid=job.study_uid,
                            source_series_uid=job.series_uid,
                            series_uid=output_series,
                            path=str(path.relative_to(self.outputs_dir.parent)),
                            state="pending",
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
            if flagged:
                audit.record(
                    session,
                    audit.AuditEvent.QA_FLAGGED,
                    outcome=audit.Outcome.MINOR_FAILURE,
                    **where,
                    job=job.id,
                    flagged_slices=flagged,
                    note="flagged slices were passed through unchanged",
                )
            audit.record(
                session,
                audit.AuditEvent.JOB_SUCCEEDED,
                **where,
                job=job.id,
                rule=job.rule,
                pipeline=job.pipeline,
                model_version=model_version,
                outputs=len(outputs),
                flagged=len(flagged),
                destinations=json.dumps(rule.destinations),
            )
        logger.info(
            "job %d succeeded: %d outputs, %d flagged",
            job.id,
            len(outputs),
            len(flagged),
            extra={"job": job.id, "series": job.series_uid},
        )
        self.on_delivery()
