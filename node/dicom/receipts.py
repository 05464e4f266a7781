"""Receipts: what each association stored, audited when it ends, even after a crash.

The instances-received record (DICOM Instances Transferred) of an
association is written when it ends. Until then the series it stored are
journaled on disk, in a folder of this process's own (locked while the
process lives, so several node processes may share ``data_dir``); a start
writes the records of the folders whose process is gone.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node import audit
from node.db import Database, Instance
from node.spool import write_atomic

logger = logging.getLogger(__name__)

#: (study, series, patient) of a received instance.
SeriesKey = tuple[str, str, str]
_LOCK = ".lock"


@dataclass
class AssociationLog:
    """What one association stored, summarised in the audit log at its end."""

    calling_ae: str
    address: str
    started: dt.datetime
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    received: Counter[SeriesKey] = field(default_factory=Counter)
    duplicates: Counter[SeriesKey] = field(default_factory=Counter)
    #: Set when the association's end is being recorded: an instance stored
    #: after that (a handler that outlived a time-out) is audited on its own.
    closed: bool = False

    @property
    def series(self) -> list[SeriesKey]:
        """The series stored, in the order they first arrived."""
        return list(dict.fromkeys([*self.received, *self.duplicates]))


def record_receipt(
    session: Session,
    key: SeriesKey,
    calling_ae: str,
    address: str,
    *,
    instances: int,
    aborted: bool,
    duplicates: int = 0,
    recovered: bool = False,
) -> None:
    """The instances-received record of one series on one association."""
    study, series, patient = key
    extra = {"recovered": "the node stopped before the association ended"} if recovered else {}
    audit.record(
        session,
        audit.AuditEvent.INSTANCES_RECEIVED,
        outcome=audit.Outcome.MINOR_FAILURE if recovered else audit.Outcome.SUCCESS,
        study_uid=study,
        series_uid=series,
        patient_id=patient,
        actor=calling_ae,
        address=address,
        instances=instances,
        duplicates=duplicates,
        aborted=aborted,
        **extra,
    )


class ReceiptJournal:
    """This process's journal of open associations, under ``root/<process id>/``.

    Parameters
    ----------
    root
        Shared by every node process using the same ``data_dir``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / uuid.uuid4().hex
        self.folder.mkdir(parents=True)
        # Held until the process ends (or close()): the folder's owner is alive.
        self._lock_fd = os.open(self.folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def note(self, log: AssociationLog) -> None:
        """Record (durably) the series ``log`` has stored so far."""
        entry = {
            "calling_ae": log.calling_ae,
            "address": log.address,
            "started": log.started.isoformat(),
            "series": [list(key) for key in log.series],
        }
        write_atomic(self.folder / f"{log.key}.json", [json.dumps(entry).encode()])

    def forget(self, log: AssociationLog) -> None:
        """Drop an association whose record is written."""
        (self.folder / f"{log.key}.json").unlink(missing_ok=True)

    def close(self) -> None:
        """At a clean stop: remove the folder unless an entry is left in it, and unlock."""
        if not any(self.folder.glob("*.json")):
            shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._lock_fd)

    def recover(self, db: Database) -> int:
        """Write the records of associations that stopped processes left; return how many."""
        recovered = 0
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if folder == self.folder or not _owner_gone(folder):
                continue
            for path in sorted(folder.glob("*.json")):
                recovered += self._recover_entry(db, path)
            if not any(folder.glob("*.json")):
                shutil.rmtree(folder, ignore_errors=True)
        return recovered

    def _recover_entry(self, db: Database, path: Path) -> int:
        try:
            entry = json.loads(path.read_text())
            started = dt.datetime.fromisoformat(entry["started"])
            series = [(str(a), str(b), str(c)) for a, b, c in entry["series"]]
            calling_ae, address = str(entry["calling_ae"]), str(entry["address"])
        except (OSError, ValueError, KeyError, TypeError):
            logger.error("unreadable receipt journal entry %s set aside", path.name)
            path.rename(self.root / f"{path.parent.name}-{path.stem}.unreadable")
            return 0
        with db.session() as session:
            for key in series:
                count = session.scalar(
                    select(func.count())
                    .select_from(Instance)
                    .where(
                        Instance.series_uid == key[1],
                        Instance.calling_ae == calling_ae,
                        Instance.received_at >= started,
                    )
                )
                record_receipt(
                    session,
                    key,
                    calling_ae,
                    address,
                    instances=int(count or 0),
                    aborted=True,
                    recovered=True,
                )
        path.unlink()
        return 1


def _owner_gone(folder: Path) -> bool:
    """Whether the process that owned ``folder`` has ended (its lock is free)."""
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
