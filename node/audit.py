"""The audit log: append-only, hash-chained events, their query and verification.

Events use the DICOM audit vocabulary where one exists (PS3.15 A.5, codes of
the DCM scheme such as 110104 "DICOM Instances Transferred"), and the node's
own names (scheme ``RADNODE``) for its processing steps. Each record holds the
SHA-256 of the previous one, so an edit, a deletion or a truncation is found
by :func:`verify_chain`. Records are written in the same transaction as the
state change they describe: an event is logged if and only if it happened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TypedDict

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from node.db import AuditHead, AuditRecord, utcnow

GENESIS = "0" * 64


class Outcome(IntEnum):
    """EventOutcomeIndicator of PS3.15 A.5.1 (RFC 3881)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class AuditEvent(Enum):
    """Audit events: (name used in queries, coded event ID)."""

    APPLICATION_START = ("application-start", "DCM 110100 Application Activity/110120 Start")
    APPLICATION_STOP = ("application-stop", "DCM 110100 Application Activity/110121 Stop")
    ASSOCIATION_ACCEPTED = ("association-accepted", "DCM 110114 User Authentication/110122 Login")
    ASSOCIATION_REJECTED = ("association-rejected", "DCM 110113 Security Alert")
    INSTANCES_RECEIVED = ("instances-received", "DCM 110104 DICOM Instances Transferred (C)")
    INSTANCE_REJECTED = ("instance-rejected", "DCM 110104 DICOM Instances Transferred (C)")
    SERIES_COMPLETED = ("series-completed", "RADNODE series-completed")
    SERIES_IGNORED = ("series-ignored", "RADNODE series-ignored")
    JOB_QUEUED = ("job-queued", "RADNODE job-queued")
    JOB_STARTED = ("job-started", "RADNODE job-started")
    JOB_SUCCEEDED = ("job-succeeded", "RADNODE job-succeeded")
    JOB_FAILED = ("job-failed", "RADNODE job-failed")
    JOB_RETRIED = ("job-retried", "RADNODE job-retried")
    JOB_SUPERSEDED = ("job-superseded", "RADNODE job-superseded")
    QA_FLAGGED = ("qa-flagged", "RADNODE qa-flagged")
    INSTANCES_SENT = ("instances-sent", "DCM 110104 DICOM Instances Transferred (R)")
    DELIVERY_RETRIED = ("delivery-retried", "RADNODE delivery-retried")
    DELIVERY_FAILED = ("delivery-failed", "RADNODE delivery-failed")
    SERIES_PURGED = ("series-purged", "DCM 110105 DICOM Study Deleted")
    EXPORT = ("export", "DCM 110106 Export")
    QUERY = ("query", "DCM 110112 Query")

    @property
    def label(self) -> str:
        """The name used by ``radnode audit --event``."""
        return self.value[0]

    @property
    def code(self) -> str:
        """The coded event identification."""
        return self.value[1]

    @classmethod
    def names(cls) -> list[str]:
        """All event names, for ``--event`` validation."""
        return [e.label for e in cls]


class Subject(TypedDict, total=False):
    """Whom an event concerns: study, series and patient."""

    study_uid: str
    series_uid: str
    output_series_uid: str
    patient_id: str


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`."""

    ok: bool
    records: int
    first_broken_id: int | None = None
    reason: str = ""


def _digest(record: AuditRecord) -> str:
    body = {
        "id": record.id,
        "ts": record.ts.isoformat(timespec="microseconds"),
        "event": record.event,
        "code": record.code,
        "outcome": record.outcome,
        "study_uid": record.study_uid,
        "series_uid": record.series_uid,
        "output_series_uid": record.output_series_uid,
        "patient_id": record.patient_id,
        "actor": record.actor,
        "detail": record.detail,
        "prev_hash": record.prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def ensure_head(session: Session) -> None:
    """Create the chain's head row on a new database.

    Raises
    ------
    RuntimeError
        When the head row is missing but records exist: recreating it would
        restart the chain over them (``radnode audit verify`` reports it).
    """
    if session.get(AuditHead, 1) is not None:
        return
    if session.execute(select(AuditRecord.id).limit(1)).first() is not None:
        raise RuntimeError("the audit chain's head row is missing; run `radnode audit verify`")
    session.add(AuditHead(id=1, last_id=0, last_hash=GENESIS))
    session.flush()


def record(
    session: Session,
    event: AuditEvent,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    study_uid: str = "",
    series_uid: str = "",
    output_series_uid: str = "",
    patient_id: str = "",
    actor: str = "",
    **detail: object,
) -> AuditRecord:
    """Append one event to the chain, inside the caller's transaction.

    ``series_uid`` is the source series an event concerns; events about the
    node's outputs also name the ``output_series_uid``, so a query by either
    series finds them.

    The head row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
    transactions are already exclusive), so concurrent writers, also in
    other processes, extend one chain in a single order.
    """
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        ensure_head(session)
        head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    rec = AuditRecord(
        id=head.last_id + 1,
        ts=utcnow(),
        event=event.label,
        code=event.code,
        outcome=int(outcome),
        study_uid=study_uid,
        series_uid=series_uid,
        output_series_uid=output_series_uid,
        patient_id=patient_id[:64],
        actor=actor[:128],
        detail=json.dumps(detail, sort_keys=True, default=str),
        prev_hash=head.last_hash,
    )
    rec.hash = _digest(rec)
    session.add(rec)
    head.last_id = rec.id
    head.last_hash = rec.hash
    session.flush()
    return rec


def query(
    session: Session,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    events: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[AuditRecord]:
    """Records matching every given filter, oldest first.

    ``since`` and ``until`` are inclusive. With ``limit``, the latest
    ``limit`` of them (still oldest first).
    """
    stmt = select(AuditRecord).order_by(AuditRecord.id.desc())
    if study_uid:
        stmt = stmt.where(AuditRecord.study_uid == study_uid)
    if series_uid:
        stmt = stmt.where(
            or_(AuditRecord.series_uid == series_uid, AuditRecord.output_series_uid == series_uid)
        )
    if events:
        stmt = stmt.where(AuditRecord.event.in_(list(events)))
    if since is not None:
        stmt = stmt.where(AuditRecord.ts >= since)
    if until is not None:
        stmt = stmt.where(AuditRecord.ts <= until)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(reversed(session.execute(stmt).scalars().all()))


def verify_chain(session: Session, batch: int = 5000) -> ChainReport:
    """Recompute every hash and link; report the first record that breaks.

    Detects an edited record (its hash no longer matches), a deleted or
    inserted one (the next record's ``prev_hash`` or the id sequence breaks),
    a truncated tail (the head row points past the last record) and a
    deleted head row, and a record added without extending the chain (beyond
    its head). The head is read first and records appended while the check
    runs are left for the next check.
    """
    head = session.get(AuditHead, 1)
    if head is None:
        if session.execute(select(AuditRecord.id).limit(1)).first() is None:
            return ChainReport(True, 0)
        return ChainReport(False, 0, 1, "the chain's head row is missing")
    prev_hash = GENESIS
    expected_id = 1
    count = 0
    last_id = 0
    while last_id < head.last_id:
        rows = list(
            session.execute(
                select(AuditRecord)
                .where(AuditRecord.id > last_id, AuditRecord.id <= head.last_id)
                .order_by(AuditRecord.id)
                .limit(batch)
            ).scalars()
        )
        if not rows:
            break
        for rec in rows:
            if rec.id != expected_id:
                return ChainReport(False, count, expected_id, f"record {expected_id} is missing")
            if rec.prev_hash != prev_hash:
                return ChainReport(
                    False, count, rec.id, "previous-hash link broken (a record before it changed)"
                )
            if _digest(rec) != rec.hash:
                return ChainReport(False, count, rec.id, "content does not match its hash")
            prev_hash = rec.hash
            expected_id += 1
            count += 1
        last_id = rows[-1].id
    if head.last_id != count or head.last_hash != prev_hash:
        return ChainReport(
            False, count, count + 1, f"chain ends at record {count}, head says {head.last_id}"
        )
    beyond = session.execute(
        select(func.min(AuditRecord.id)).where(AuditRecord.id > head.last_id)
    ).scalar()
    if beyond is not None:
        # Appended since the head was read (then the head has moved past it
        # too), or inserted without extending the chain.
        latest = session.execute(select(AuditHead.last_id).where(AuditHead.id == 1)).scalar()
        if latest is None or beyond > latest:
            return ChainReport(
                False, count, beyond, f"record {beyond} lies beyond the chain's head"
            )
    return ChainReport(True, count)


def as_dict(rec: AuditRecord) -> dict[str, object]:
    """A record as a JSON-ready mapping (``radnode audit --format json``)."""
    return {
        "id": rec.id,
        "ts": rec.ts.isoformat(timespec="milliseconds") + "Z",
        "event": rec.event,
        "code": rec.code,
        "outcome": rec.outcome,
        "study_uid": rec.study_uid,
        "series_uid": rec.series_uid,
        "output_series_uid": rec.output_series_uid,
        "patient_id": rec.patient_id,
        "actor": rec.actor,
        "detail": json.loads(rec.detail),
        "hash": rec.hash,
    }
