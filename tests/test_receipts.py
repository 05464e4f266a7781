"""Receipt journals: a start audits only what stopped processes left, never a live one's."""

from __future__ import annotations

import os
from pathlib import Path

from node import audit
from node.db import AuditRecord, Database, Instance, make_engine, utcnow
from node.dicom.receipts import AssociationLog, ReceiptJournal
from node.dicom.scp import StorageSCP
from node.ingest import Accepted, Identity, Ingest
from node.settings import NodeSettings
from node.spool import Spool

KEY = ("1.2", "1.2.3", "P1")


def _store(db: Database, sop: str, calling_ae: str) -> None:
    with db.session() as session:
        session.add(
            Instance(
                sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid=KEY[0],
                series_uid=KEY[1],
                path=f"{sop}.dcm",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=1,
                calling_ae=calling_ae,
                received_at=utcnow(),
            )
        )


def _open_association(journal: ReceiptJournal, db: Database, calling_ae: str) -> AssociationLog:
    log = AssociationLog(calling_ae=calling_ae, address="127.0.0.1", started=utcnow())
    _store(db, f"1.2.3.{calling_ae}.1", calling_ae)
    _store(db, f"1.2.3.{calling_ae}.2", calling_ae)
    log.received[KEY] += 2
    journal.note(log)
    return log


def _receipts(db: Database) -> list[AuditRecord]:
    with db.read() as session:
        return audit.query(session, events=["instances-received"])


def test_only_a_stopped_process_journal_is_recovered(tmp_path: Path) -> None:
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    root = tmp_path / "associations"
    alive, stopped = ReceiptJournal(root), ReceiptJournal(root)
    _open_association(alive, db, "ALIVE")
    _open_association(stopped, db, "STOPPED")
    os.close(stopped._lock_fd)  # the process ends without closing its journal

    starting = ReceiptJournal(root)
    assert starting.recover(db) == 1
    [record] = _receipts(db)
    assert record.actor == "STOPPED" and '"instances": 2' in record.detail
    assert '"recovered"' in record.detail
    assert not stopped.folder.exists()
    # The live process's open association is left to it.
    assert list(alive.folder.glob("*.json")) != []
    assert starting.recover(db) == 0
    db.close()


def test_a_clean_close_leaves_nothing_to_recover(tmp_path: Path) -> None:
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    root = tmp_path / "associations"
    journal = ReceiptJournal(root)
    journal.forget(_open_association(journal, db, "SCU"))
    journal.close()
    assert list(root.iterdir()) == []
    assert ReceiptJournal(root).recover(db) == 0
    assert _receipts(db) == []
    db.close()


def test_an_instance_stored_after_its_association_ended_is_audited_on_its_own(
    tmp_path: Path,
) -> None:
    """A C-STORE handler that outlives its association (a time-out) still leaves a record."""
    db = Database(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    spool = Spool(tmp_path / "spool")
    journal = ReceiptJournal(tmp_path / "associations")
    scp = StorageSCP(NodeSettings(), db, Ingest(db, spool, lambda ds: False), spool, journal)
    identity = Identity("1.2.840.10008.5.1.4.1.1.2", "1.2.3.9", KEY[0], KEY[1], "CT", KEY[2])
    log = AssociationLog(calling_ae="SLOW", address="127.0.0.1", started=utcnow())
    scp._count(log, Accepted(identity, duplicate=False, origin="external", path="x.dcm"))
    assert log.received[KEY] == 1 and _receipts(db) == []  # counted for the end record

    log.closed = True  # the association's end has been recorded
    scp._count(log, Accepted(identity, duplicate=True, origin="external", path="x.dcm"))
    [record] = _receipts(db)
    assert record.actor == "SLOW"
    assert '"duplicates": 1' in record.detail and '"aborted": true' in record.detail
    assert log.duplicates[KEY] == 0
    journal.forget(log)
