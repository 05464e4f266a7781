"""A pipeline that never returns: its job times out, is retried, and its worker is replaced."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import select

from node import audit
from node.db import Job, utcnow
from node.jobs import JobQueue, WorkerPool
from node.peers import wait_until
from node.processing import PipelineCache, Processor
from pipelines.base import (
    ModelInfo,
    ParamValue,
    Pipeline,
    PipelineEntry,
    Registry,
    Result,
    Volume,
)
from tests.processing_setup import match_all_settings, queue_job


class Hangs:
    """A pipeline stuck until ``release`` is set (as a deadlocked library would be)."""

    name = "hangs"
    modalities: tuple[str, ...] = ("CT",)
    built = 0
    release = threading.Event()

    def __init__(self) -> None:
        Hangs.built += 1

    def model_info(self) -> ModelInfo:
        raise NotImplementedError  # never reached: run() does not return

    def run(self, volume: Volume) -> Result:
        Hangs.release.wait(60)
        raise RuntimeError("released by the test")


def _factory(params: Mapping[str, ParamValue]) -> Pipeline:
    return Hangs()


def test_hung_pipeline_times_out_and_its_worker_is_replaced(tmp_path: Path) -> None:
    registry = Registry()
    registry.register(PipelineEntry("hangs", _factory, ("CT",), "never returns"))
    settings = match_all_settings(
        tmp_path, registry, {"r": "hangs"}, jobs={"timeout_seconds": 1, "max_attempts": 2}
    )
    queued = queue_job(tmp_path, "r", "hangs")
    db, spool = queued.db, queued.spool
    queue = JobQueue(db, settings.jobs)
    processor = Processor(
        db, settings, spool, queue, PipelineCache(registry, settings), tmp_path / "out", None
    )
    workers = WorkerPool(queue, processor.process, 1, "test:1")
    processor.on_hung = workers.abandon
    workers.start()
    try:

        def retried() -> Job | None:
            with db.read() as session:
                job = session.scalars(select(Job)).one()
                return job if job.state == "queued" and job.attempts == 1 else None

        job = wait_until(retried, 30, "the hung job queued again")
        assert job.error is not None and "timed out" in job.error
        with db.read() as session:
            records = audit.query(session, events=["job-retried"])
        assert len(records) == 1 and "timed out" in records[0].detail
        # The stuck thread is replaced (just after the failure is recorded):
        # the pool still serves the queue.
        wait_until(lambda: _running("worker-1"), 10, "a replacement worker")
        assert workers.alive == 1  # the stuck worker-0 no longer counts
        # The second attempt runs in a new pipeline instance (the first one's
        # lock is held by the stuck thread) and times out too: failed for good.
        with db.session() as session:
            session.execute(
                Job.__table__.update().values(not_before=utcnow())  # type: ignore[attr-defined]
            )
        workers.wake()

        def failed() -> bool:
            with db.read() as session:
                return session.scalars(select(Job.state)).one() == "failed"

        wait_until(failed, 30, "the job failed after its attempts")
        assert Hangs.built == 2
        wait_until(lambda: _running("worker-2"), 10, "a second replacement worker")
        assert workers.alive == 1
    finally:
        Hangs.release.set()
        workers.stop()
        db.close()


def _running(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


class SlowBuild:
    """A pipeline whose build waits until ``finish`` is set."""

    name = "slow"
    modalities: tuple[str, ...] = ("CT",)
    started = threading.Event()
    finish = threading.Event()
    built = 0

    def __init__(self) -> None:
        SlowBuild.built += 1
        SlowBuild.started.set()
        SlowBuild.finish.wait(30)

    @classmethod
    def reset(cls) -> None:
        cls.started, cls.finish, cls.built = threading.Event(), threading.Event(), 0

    def model_info(self) -> ModelInfo:
        raise NotImplementedError

    def run(self, volume: Volume) -> Result:
        raise NotImplementedError


def _slow_cache(tmp_path: Path) -> PipelineCache:
    SlowBuild.reset()
    registry = Registry()
    registry.register(PipelineEntry("hangs", _factory, ("CT",), "never returns"))
    registry.register(PipelineEntry("slow", lambda params: SlowBuild(), ("CT",), "slow build"))
    return PipelineCache(
        registry, match_all_settings(tmp_path, registry, {"fast": "hangs", "slow": "slow"})
    )


def test_a_slow_build_holds_up_only_its_own_rule(tmp_path: Path) -> None:
    cache = _slow_cache(tmp_path)
    fast = cache.get("fast")
    results: list[object] = []
    builders = [
        threading.Thread(target=lambda: results.append(cache.get("slow"))) for _ in range(2)
    ]
    for builder in builders:
        builder.start()
    try:
        assert SlowBuild.started.wait(10)
        # While "slow" builds, the built rule is served and can be discarded.
        assert cache.get("fast") is fast
        cache.discard("fast")
        assert cache.get("fast") is not fast
        assert all(b.is_alive() for b in builders)
    finally:
        SlowBuild.finish.set()
        for builder in builders:
            builder.join(10)
    # Two callers at once: one build, which both got and later callers get.
    assert SlowBuild.built == 1
    assert results[0] is results[1] is cache.get("slow")


def test_a_build_discarded_while_it_hangs_is_not_kept(tmp_path: Path) -> None:
    cache = _slow_cache(tmp_path)
    results: list[object] = []
    hung = threading.Thread(target=lambda: results.append(cache.get("slow")))
    hung.start()
    assert SlowBuild.started.wait(10)
    cache.discard("slow")  # as a job time-out does
    SlowBuild.finish.set()  # the late build completes ...
    hung.join(10)
    assert SlowBuild.built == 1 and len(results) == 1
    # ... but the next job builds a pipeline of its own (no wait on the old lock).
    fresh = cache.get("slow")
    assert SlowBuild.built == 2 and fresh is not results[0]


def test_the_warm_up_builds_and_prepares_every_rule(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from node.__main__ import Node

    class Lazy(Hangs):
        prepared = 0

        def prepare(self) -> None:
            Lazy.prepared += 1

    registry = Registry()
    registry.register(PipelineEntry("lazy", lambda params: Lazy(), ("CT",), "lazy loads"))
    settings = match_all_settings(tmp_path, registry, {"a": "lazy", "b": "lazy"})
    cache = PipelineCache(registry, settings)
    node = SimpleNamespace(settings=settings, pipelines=cache, stopping=threading.Event())
    Node._warm_up(node)  # type: ignore[arg-type]
    assert Lazy.prepared == 2
    assert isinstance(cache.get("a")[0], Lazy) and Lazy.prepared == 2
    # A stopping node builds nothing more.
    node.pipelines = PipelineCache(registry, settings)
    node.stopping.set()
    Node._warm_up(node)  # type: ignore[arg-type]
    assert Lazy.prepared == 2
