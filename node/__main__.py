"""Composition root: build settings, index, spool, scheduler, workers and AE, and wire them."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom import Dataset
from pynetdicom import _config as pynetdicom_config

from node import __version__, audit
from node.api import ApiServer
from node.completion import Completion
from node.db import Database, make_engine
from node.delivery import Dispatcher
from node.dicom.receipts import ReceiptJournal
from node.dicom.scp import StorageSCP
from node.ingest import Ingest
from node.jobs import JobQueue, WorkerPool, worker_identity
from node.output import is_radnode_output
from node.processing import PipelineCache, Processor
from node.retention import Retention
from node.routing import Router
from node.settings import Settings
from node.signing import load_or_create_identity, sign_dataset
from node.signing_identity import managed_keys_dir
from node.spool import Spool, remove_stale_temporaries
from pipelines.registry import default_registry

logger = logging.getLogger(__name__)


def _guarded(name: str, func: Callable[[], object]) -> Callable[[], None]:
    """A scheduler task that logs its failure instead of dying silently."""

    def run() -> None:
        try:
            func()
        except Exception:  # the edge of a scheduled task
            logger.exception("scheduled task %s failed", name)

    return run


@dataclass
class Node:
    """A running node: every component, started and stopped together."""

    settings: Settings
    db: Database
    scp: StorageSCP
    workers: WorkerPool
    scheduler: BackgroundScheduler
    api: ApiServer | None
    ingest: Ingest
    retention: Retention
    pipelines: PipelineCache
    #: Set when the node stops: a warm-up still running builds nothing more.
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Recover what a previous process left, then start serving."""
        reindexed = self.ingest.reindex_spool()
        if reindexed:
            logger.info("re-indexed %d spooled instance(s) the index lacked", reindexed)
        stale = remove_stale_temporaries(self._written_folders())
        if stale:
            logger.info("removed %d temporary file(s) left by writes a stop cut off", stale)
        if self.retention.recover():
            logger.info("series a stopped process left half purged are due again")
        receipts = self.scp.journal.recover(self.db)
        if receipts:
            logger.warning("audited the receipts of %d association(s) cut off by a stop", receipts)
        with self.db.session() as session:
            audit.record(
                session,
                audit.AuditEvent.APPLICATION_START,
                actor=self.settings.node.ae_title,
                version=__version__,
                port=self.settings.node.port,
                reindexed=reindexed,
                stale_temporaries_removed=stale,
            )
        self.scheduler.start()
        self.workers.start()
        if self.settings.node.warm_up and self.settings.node.workers and self.settings.rules:
            logger.info(
                "building the pipelines of %d rule(s) ahead of their first jobs",
                len(self.settings.rules),
            )
            threading.Thread(target=self._warm_up, name="pipeline-warm-up", daemon=True).start()
        self.scp.start()
        if self.api is not None:
            self.api.start()

    def _warm_up(self) -> None:
        """Build every rule's pipeline now, so the first job does not wait for it.

        The first build in a process imports torch, MONAI and the runtime
        and converts the network (seconds). A rule whose pipeline cannot be
        built is logged here and fails its jobs as before.
        """
        for rule in self.settings.rules:
            if self.stopping.is_set():
                return
            started = time.perf_counter()
            try:
                pipeline, lock = self.pipelines.get(rule.name)
                prepare = getattr(pipeline, "prepare", None)
                if callable(prepare):
                    with lock:  # as a job would hold it: no load twice
                        prepare()
            except Exception:  # its jobs will fail and say why in the audit log too
                logger.exception("pipeline of rule %r cannot be built or prepared", rule.name)
                continue
            seconds = time.perf_counter() - started
            logger.info("pipeline of rule %r ready (%.1f s)", rule.name, seconds)

    def _written_folders(self) -> Iterator[Path]:
        """Every folder the node writes files into atomically (spool, outputs, keys, journal)."""
        yield from self.ingest.spool.root.glob("*/*/")
        yield from self.retention.outputs_dir.glob("job-*/")
        yield managed_keys_dir(self.settings.node.data_dir)
        yield from self.scp.journal.root.glob("*/")

    def stop(self) -> None:
        """Stop accepting, let work in progress finish, and record the stop."""
        self.stopping.set()
        self.scp.stop()
        self.scp.journal.close()
        if self.api is not None:
            self.api.stop()
        self.scheduler.shutdown(wait=True)
        self.workers.stop()
        with self.db.session() as session:
            audit.record(
                session,
                audit.AuditEvent.APPLICATION_STOP,
                actor=self.settings.node.ae_title,
                version=__version__,
            )
        self.db.close()


def build_node(settings: Settings) -> Node:
    """Build every component from ``settings`` (nothing is started)."""
    # Patient identifiers never reach the process log.
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom's standard handlers format every PDU and DIMSE message for a
    # debug log the node never shows (its logger is at WARNING): skip the work.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    data_dir = settings.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(make_engine(settings.node.database_url))
    spool = Spool(data_dir / "spool")
    registry = default_registry()
    identity = load_or_create_identity(
        managed_keys_dir(data_dir),
        settings.node.signing_key,
        settings.node.signing_cert,
        common_name=settings.node.ae_title,
    )

    def signer(ds: Dataset) -> None:
        sign_dataset(ds, identity)

    ingest = Ingest(db, spool, is_radnode_output)
    queue = JobQueue(db, settings.jobs)
    owner = worker_identity()
    dispatcher = Dispatcher(db, settings, data_dir)
    pipelines = PipelineCache(registry, settings)
    processor = Processor(
        db,
        settings,
        spool,
        queue,
        pipelines,
        data_dir / "outputs",
        signer,
    )
    workers = WorkerPool(queue, processor.process, settings.node.workers, owner)
    processor.on_hung = workers.abandon
    completion = Completion(
        db, spool, Router(settings.rules), settings.completion, on_queued=workers.wake
    )
    retention = Retention(db, spool, data_dir / "outputs", settings.retention)

    scheduler = BackgroundScheduler(timezone="UTC")
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        _guarded("completion", completion.sweep),
        "interval",
        seconds=settings.completion.sweep_seconds,
        id="completion",
        **common,
    )
    scheduler.add_job(
        _guarded("delivery", dispatcher.pump), "interval", seconds=0.5, id="delivery", **common
    )
    scheduler.add_job(
        _guarded("recovery", lambda: (queue.recover(), dispatcher.recover())),
        "interval",
        seconds=15,
        id="recovery",
        **common,
    )
    scheduler.add_job(
        _guarded("retention", retention.sweep), "interval", hours=1, id="retention", **common
    )
    # Jobs that a dead process on this host held are not waited for.
    queue.release_dead_local(socket.gethostname())
    scp = StorageSCP(settings.node, db, ingest, spool, ReceiptJournal(data_dir / "associations"))
    api = (
        ApiServer(settings.node.http_host, settings.node.http_port, db, scp)
        if settings.node.http_port
        else None
    )
    return Node(settings, db, scp, workers, scheduler, api, ingest, retention, pipelines)


def serve(settings: Settings) -> int:
    """Run the node until SIGINT or SIGTERM; return the exit code."""
    node = build_node(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node.start()
    logger.info("radnode %s ready", __version__)
    stop.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    from node.cli import main

    raise SystemExit(main())
