"""The index: SQLAlchemy engine, sessions and the tables of the node's state.

Everything the node must not forget across a restart lives here: received
instances, series and their completion, jobs with leases, deliveries with
their retry schedule, and the hash-chained audit log. The schema uses nothing
SQLite-only, so the same code runs on PostgreSQL for scale-out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

UID = String(64)


def utcnow() -> dt.datetime:
    """Now, as a naive UTC datetime (how every time is stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the node's tables."""


class Instance(Base):
    """One received SOP instance, stored in the spool."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    path: Mapped[str] = mapped_column(String(512))
    transfer_syntax: Mapped[str] = mapped_column(UID)
    size: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Series(Base):
    """A series being received; ``state`` moves receiving -> complete.

    A late instance of a complete series sets it back to ``receiving`` and
    bumps ``generation``, so completion runs again and re-queues its jobs.
    """

    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    origin: Mapped[str] = mapped_column(String(16), default="external")
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    generation: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_series_state_last", "state", "last_received_at"),)


class Job(Base):
    """Running one rule's pipeline on one generation of a series."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    generation: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_series_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    output_count: Mapped[int] = mapped_column(Integer, default=0)
    flagged_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("series_uid", "rule", "generation", name="uq_job_series_rule_gen"),
        Index("ix_jobs_state", "state", "not_before"),
    )


class Delivery(Base):
    """Sending one output instance to one destination, retried until done."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str] = mapped_column(UID)
    source_series_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("job_id", "destination", "sop_instance_uid", name="uq_delivery"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )


class AuditRecord(Base):
    """One audit event; ``hash`` covers the record and ``prev_hash``."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[int] = mapped_column(Integer)
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    series_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    output_series_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row holding the chain's last hash; locked by each append."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed while one writer commits; NORMAL sync is
    # durable against a process crash (the spool files themselves are
    # fsync'd, and start-up re-indexes any spooled file the index lacks).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    # Take the write lock at BEGIN: a deferred transaction that upgrades to a
    # writer can fail with "database is locked" instead of waiting.
    dbapi_conn.isolation_level = None


def _sqlite_read_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` and the tables when they are missing."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        # hide_parameters: error messages (and so the process log) never carry
        # bound values such as patient IDs.
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True
        )
    Base.metadata.create_all(engine)
    _create_audit_head(engine)
    return engine


def _create_audit_head(engine: Engine) -> None:
    """The audit chain's head row exists before any writer locks it."""
    try:
        with engine.begin() as conn:
            has_head = conn.execute(select(AuditHead.id).where(AuditHead.id == 1)).first()
            has_records = conn.execute(select(AuditRecord.id).limit(1)).first()
            # Never recreate a deleted head over existing records: verify
            # must find that deletion.
            if has_head is None and has_records is None:
                conn.execute(insert(AuditHead).values(id=1, last_id=0, last_hash="0" * 64))
    except IntegrityError:
        pass  # another process created it at the same moment


def upsert(db: Database, table: Table) -> Any:
    """An INSERT with ``on_conflict_do_nothing``/``_update`` for the index's dialect."""
    if db.is_sqlite:
        return sqlite_insert(table)
    return postgresql_insert(table)


class Database:
    """The engines and session factories, passed to every component.

    On SQLite, write transactions take the database lock at BEGIN
    (``BEGIN IMMEDIATE``) while read-only ones use a second engine with plain
    deferred transactions, so frequent polls for due work do not queue
    behind (or hold up) the receiver's writes.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._factory = sessionmaker(engine, expire_on_commit=False)
        reader = engine
        if engine.dialect.name == "sqlite":
            reader = create_engine(
                engine.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                hide_parameters=True,
            )
            event.listen(reader, "connect", _sqlite_read_pragmas)
        self.reader = reader
        self._read_factory = sessionmaker(reader, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether the index is SQLite (no row locks; writers serialise)."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._factory() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (never takes SQLite's write lock)."""
        with self._read_factory() as session, session.begin():
            yield session

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()
