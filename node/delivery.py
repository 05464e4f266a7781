"""The dispatcher: sends outputs to destinations from durable delivery records.

Each output has one delivery row per destination. Due rows are claimed
(state ``sending`` with a deadline, so a process that dies mid-send gives
them back), sent over one association per destination, and recorded per
instance. A refusal or an unreachable peer is retried with exponential
backoff until ``max_attempts``, then the delivery is marked failed and
audited.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update

from node import audit
from node.db import Database, Delivery, utcnow
from node.dicom.scu import StoreResult, send_files
from node.dicom.tls import client_context
from node.errors import ConfigError, DeliveryError, StorageError
from node.settings import DeliverySettings, DicomDestination, FolderDestination, Settings
from node.spool import write_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    id: int
    destination: str
    path: Path
    sop_class_uid: str
    study_uid: str
    source_series_uid: str
    series_uid: str
    attempts: int
    #: The claim's deadline, as written on the row: while the row still holds
    #: it (and is ``sending``), this claim owns it.
    deadline: dt.datetime


class Dispatcher:
    """Sends due deliveries and records every outcome."""

    def __init__(self, db: Database, settings: Settings, data_dir: Path, batch: int = 500) -> None:
        self.db = db
        self.settings = settings
        self.delivery: DeliverySettings = settings.delivery
        self.data_dir = data_dir
        self.batch = batch

    def retry_failed(self, actor: str, destination: str | None = None) -> int:
        """Give deliveries that failed for good a fresh set of attempts."""
        now = utcnow()
        with self.db.session() as session:
            stmt = select(Delivery).where(Delivery.state == "failed")
            if destination is not None:
                stmt = stmt.where(Delivery.destination == destination)
            rows = session.execute(stmt.with_for_update()).scalars().all()
            per_series: Counter[tuple[str, str, str, str]] = Counter()
            for row in rows:
                row.state = "pending"
                row.attempts = 0
                row.next_attempt_at = now
                per_series[
                    (row.study_uid, row.source_series_uid, row.series_uid, row.destination)
                ] += 1
            for (study, source, output, name), count in per_series.items():
                audit.record(
                    session,
                    audit.AuditEvent.DELIVERY_RETRIED,
                    study_uid=study,
                    series_uid=source,
                    output_series_uid=output,
                    actor=actor,
                    destination=name,
                    instances=count,
                    reason="retry requested by an operator",
                )
            return len(rows)

    def summary(self) -> list[tuple[str, str, int]]:
        """(destination, state, count) of every delivery in the index."""
        with self.db.read() as session:
            rows = session.execute(
                select(Delivery.destination, Delivery.state, func.count())
                .group_by(Delivery.destination, Delivery.state)
                .order_by(Delivery.destination, Delivery.state)
            ).all()
        return [(str(d), str(s), int(c)) for d, s, c in rows]

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        initial = self.delivery.backoff_initial_seconds
        return float(min(initial * 2 ** max(attempts - 1, 0), self.delivery.backoff_max_seconds))

    def _claim(self) -> list[_Item]:
        now = utcnow()
        # The claim deadline outlasts a whole batch of timeouts; after it, a
        # crashed sender's rows are due again.
        deadline = now + dt.timedelta(seconds=self.delivery.timeout_seconds * 4 + 60)
        with self.db.read() as session:
            due_any = session.execute(
                select(Delivery.id)
                .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                .limit(1)
            ).first()
        if due_any is None:
            return []
        with self.db.session() as session:
            rows = (
                session.execute(
                    select(Delivery)
                    .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                    .order_by(Delivery.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            items = []
            for row in rows:
                row.state = "sending"
                row.next_attempt_at = deadline
                items.append(
                    _Item(
                        row.id,
                        row.destination,
                        self.data_dir / row.path,
                        row.sop_class_uid,
                        row.study_uid,
                        row.source_series_uid,
                        row.series_uid,
                        row.attempts,
                        deadline,
                    )
                )
        return items

    def recover(self) -> int:
        """Give back deliveries whose sender died while sending them."""
        now = utcnow()
        with self.db.read() as session:
            stale_any = session.execute(
                select(Delivery.id)
                .where(Delivery.state == "sending", Delivery.next_attempt_at < now)
                .limit(1)
            ).first()
        if stale_any is None:
            return 0
        with self.db.session() as session:
            # One conditional statement: a row recorded meanwhile is left alone.
            result = session.execute(
                update(Delivery)
                .where(Delivery.state == "sending", Delivery.next_attempt_at < now)
                .values(state="pending", next_attempt_at=now)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def pump(self) -> int:
        """Send every due delivery once; return how many were attempted."""
        items = self._claim()
        by_destination: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_destination[item.destination].append(item)
        for name, group in by_destination.items():
            try:
                destination = self.settings.destination(name)
            except ConfigError as exc:  # a destination removed from settings.toml
                results = [StoreResult(None, str(exc))] * len(group)
            else:
                results = self._send(destination, group)
            self._record(name, group, results)
        return len(items)

    def _send(
        self, destination: DicomDestination | FolderDestination, group: list[_Item]
    ) -> list[StoreResult]:
        if isinstance(destination, FolderDestination):
            results = []
            for item in group:
                target = destination.path / item.study_uid / item.series_uid / item.path.name
                try:
                    write_atomic(target, [item.path.read_bytes()])
                    results.append(StoreResult(0x0000))
                except (OSError, StorageError) as exc:
                    results.append(StoreResult(None, str(exc)))
            return results
        try:
            tls = (
                client_context(destination.tls_ca, destination.tls_cert, destination.tls_key)
                if destination.tls
                else None
            )
            return send_files(
                calling_ae=destination.calling_ae_title or self.settings.node.ae_title,
                ae_title=destination.ae_title,
                host=destination.host,
                port=destination.port,
                files=[(item.path, item.sop_class_uid) for item in group],
                timeout=self.delivery.timeout_seconds,
                tls=tls,
            )
        except (DeliveryError, ConfigError) as exc:
            return [StoreResult(None, str(exc))] * len(group)

    def _delivered_event(self, name: str) -> audit.AuditEvent:
        """Instances sent over DICOM are transferred; copies to a folder are exported."""
        try:
            destination = self.settings.destination(name)
        except ConfigError:  # removed from settings.toml meanwhile: sent when it existed
            return audit.AuditEvent.INSTANCES_SENT
        if isinstance(destination, FolderDestination):
            return audit.AuditEvent.EXPORT
        return audit.AuditEvent.INSTANCES_SENT

    def _record(self, name: str, group: list[_Item], results: list[StoreResult]) -> None:
        now = utcnow()
        # Keyed by (study, source series, output series).
        sent: Counter[tuple[str, str, str]] = Counter()
        retried: dict[tuple[str, str, str], tuple[int, str, float]] = {}
        failed: dict[tuple[str, str, str], tuple[int, str]] = {}
        with self.db.session() as session:
            for item, result in zip(group, results, strict=True):
                row = session.get(Delivery, item.id, with_for_update=True)
                if row is None or row.state != "sending" or row.next_attempt_at != item.deadline:
                    continue  # given back by recovery meanwhile: another claim owns it
                key = (item.study_uid, item.source_series_uid, item.series_uid)
                row.attempts += 1
                row.last_status = result.status
                row.last_error = result.error
                if result.ok:
                    row.state = "sent"
                    row.sent_at = now
                    sent[key] += 1
                    continue
                why = result.error or f"status 0x{result.status or 0:04X}"
                if row.attempts >= self.delivery.max_attempts:
                    row.state = "failed"
                    count, _ = failed.get(key, (0, ""))
                    failed[key] = (count + 1, why)
                else:
                    delay = self.backoff(row.attempts)
                    row.state = "pending"
                    row.next_attempt_at = now + dt.timedelta(seconds=delay)
                    count, _, _ = retried.get(key, (0, "", 0.0))
                    retried[key] = (count + 1, why, delay)
            delivered = self._delivered_event(name)
            for (study, source, output), count in sent.items():
                audit.record(
                    session,
                    delivered,
                    study_uid=study,
                    series_uid=source,
                    output_series_uid=output,
                    actor=name,
                    destination=name,
                    instances=count,
                )
            for (study, source, output), (count, why, delay) in retried.items():
                audit.record(
                    session,
                    audit.AuditEvent.DELIVERY_RETRIED,
                    outcome=audit.Outcome.MINOR_FAILURE,
                    study_uid=study,
                    series_uid=source,
                    output_series_uid=output,
                    actor=name,
                    destination=name,
                    instances=count,
                    error=why[:500],
                    retry_in_seconds=delay,
                )
            for (study, source, output), (count, why) in failed.items():
                audit.record(
                    session,
                    audit.AuditEvent.DELIVERY_FAILED,
                    outcome=audit.Outcome.SERIOUS_FAILURE,
                    study_uid=study,
                    series_uid=source,
                    output_series_uid=output,
                    actor=name,
                    destination=name,
                    instances=count,
                    error=why[:500],
                    attempts=self.delivery.max_attempts,
                )
        for (_, _, series), count in sent.items():
            logger.info("sent %d instance(s) to %s", count, name, extra={"series": series})
        for (_, _, series), (count, why, delay) in retried.items():
            logger.warning(
                "%d instance(s) to %s failed (%s); retry in %.0f s",
                count,
                name,
                why,
                delay,
                extra={"series": series},
            )
