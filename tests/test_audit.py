"""The audit log: hash chain, tamper detection, queries and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from node import audit
from node.db import AuditHead, AuditRecord, Database, make_engine, utcnow
from node.peers import LOOPBACK, run_tool, wait_until
from tests.conftest import NodeRunner


def filled(url: str, count: int = 6) -> Database:
    db = Database(make_engine(url))
    for i in range(count):
        with db.session() as session:
            audit.record(
                session,
                audit.AuditEvent.SERIES_COMPLETED,
                study_uid="1.2.3",
                series_uid=f"1.2.3.{i % 2}",
                patient_id="P1",
                instances=i,
            )
    return db


def verify(db: Database) -> audit.ChainReport:
    with db.session() as session:
        return audit.verify_chain(session)


def test_chain_is_intact_and_finds_an_edited_record(database_url: str) -> None:
    db = filled(database_url)
    assert verify(db) == audit.ChainReport(True, 6)
    with db.session() as session:
        session.execute(update(AuditRecord).where(AuditRecord.id == 3).values(patient_id="P2"))
    report = verify(db)
    assert not report.ok and report.first_broken_id == 3
    assert "does not match its hash" in report.reason
    db.close()


def test_chain_finds_a_record_added_beyond_its_head(database_url: str) -> None:
    db = filled(database_url)
    with db.session() as session:
        forged = AuditRecord(
            id=7,
            ts=utcnow(),
            event="instances-received",
            code="DCM 110104",
            outcome=0,
            actor="X",
            prev_hash="bogus",
            hash="bogus",
        )
        session.add(forged)
    report = verify(db)
    assert not report.ok and report.first_broken_id == 7
    assert "beyond the chain's head" in report.reason
    db.close()


def test_chain_finds_a_deleted_record_and_a_truncated_tail(database_url: str) -> None:
    db = filled(database_url)
    with db.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id == 4))
    assert verify(db).first_broken_id == 4
    with db.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id >= 4))
    report = verify(db)
    assert not report.ok and "head says 6" in report.reason
    db.close()


def test_concurrent_writers_extend_one_chain(database_url: str) -> None:
    db = Database(make_engine(database_url))

    def write(n: int) -> None:
        for i in range(15):
            with db.session() as session:
                audit.record(session, audit.AuditEvent.JOB_QUEUED, series_uid=f"{n}.{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(db) == audit.ChainReport(True, 60)
    db.close()


def test_query_filters(database_url: str) -> None:
    db = filled(database_url)
    with db.session() as session:
        audit.record(
            session, audit.AuditEvent.INSTANCES_SENT, series_uid="1.2.3.0", output_series_uid="9.9"
        )
        by_series = audit.query(session, series_uid="1.2.3.0")
        by_output = audit.query(session, series_uid="9.9")
        sent = audit.query(session, events=["instances-sent"])
        future = audit.query(session, since=dt.datetime(2999, 1, 1))
    assert len(by_series) == 4  # three completions and the send
    assert [r.event for r in by_output] == ["instances-sent"]
    assert len(sent) == 1 and future == []
    db.close()


def test_query_by_study_time_and_limit(database_url: str) -> None:
    db = filled(database_url)
    with db.session() as session:
        audit.record(session, audit.AuditEvent.SERIES_COMPLETED, study_uid="4.5.6")
        everything = audit.query(session)
        other = audit.query(session, study_uid="4.5.6")
        first, last = everything[0].ts, everything[-1].ts
        # Both bounds are inclusive; a window between records finds none.
        window = audit.query(session, since=first, until=last)
        before = audit.query(session, until=first - dt.timedelta(microseconds=1))
        # The latest three, still oldest first.
        latest = audit.query(session, limit=3)
        latest_of_study = audit.query(session, study_uid="1.2.3", limit=2)
    assert [r.study_uid for r in other] == ["4.5.6"]
    assert len(everything) == 7 and len(window) == 7 and before == []
    assert [r.id for r in latest] == [r.id for r in everything[-3:]]
    assert [r.id for r in latest_of_study] == [r.id for r in everything[4:6]]
    db.close()


def test_a_date_bound_is_the_whole_day() -> None:
    from node.api import parse_time

    assert parse_time("2026-11-22") == dt.datetime(2026, 11, 22)
    assert parse_time("2026-11-22", end=True) == dt.datetime(2026, 11, 22, 23, 59, 59, 999999)
    # A time is taken as given (UTC unless it has an offset).
    assert parse_time("2026-11-22T10:00", end=True) == dt.datetime(2026, 11, 22, 10)
    assert parse_time("2026-11-22T10:00+01:00") == dt.datetime(2026, 11, 22, 9)


def radnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_query_and_verify(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    filled(url).close()
    cfg = tmp_path / "settings.toml"
    cfg.write_text(f'[node]\ndatabase_url = "{url}"\ndata_dir = "{tmp_path}"\n')

    table = radnode("audit", "--config", str(cfg), "--series", "1.2.3.1")
    assert table.returncode == 0, table.stderr
    assert "series-completed" in table.stdout and "(3 records)" in table.stdout

    lines = radnode(
        "audit", "--config", str(cfg), "--event", "series-completed", "--format", "json"
    )
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(rows) == 6 and rows[0]["detail"] == {"instances": 0}
    assert rows[0]["code"].startswith("RADNODE")

    until = radnode("audit", "--config", str(cfg), "--until", "2000-01-01", "--format", "json")
    assert until.stdout == ""
    # Dates: --until today takes in all of today (the records were written by now).
    today = utcnow().date()
    yesterday = today - dt.timedelta(days=1)
    days = ["--since", yesterday.isoformat(), "--until", today.isoformat()]
    study = ["--study", "1.2.3", *days, "--format", "json"]
    dated = radnode("audit", "--config", str(cfg), *study)
    assert dated.returncode == 0, dated.stderr
    assert len(dated.stdout.splitlines()) == 6
    latest = radnode("audit", "--config", str(cfg), *study, "--limit", "2")
    assert [json.loads(line)["detail"] for line in latest.stdout.splitlines()] == [
        {"instances": 4},
        {"instances": 5},
    ]
    zero = radnode("audit", "--config", str(cfg), "--limit", "0")
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr
    bad = radnode("audit", "--config", str(cfg), "--event", "series-complete")
    assert bad.returncode == 2 and "Did you mean 'series-completed'" in bad.stderr

    ok = radnode("audit", "verify", "--config", str(cfg))
    assert ok.returncode == 0 and "intact" in ok.stdout

    db = Database(make_engine(url))
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit SET detail = '{\"instances\": 99}' WHERE id = 2"))
    db.close()
    broken = radnode("audit", "verify", "--config", str(cfg))
    assert broken.returncode == 1
    assert "BROKEN at record 2" in broken.stdout


def test_a_deleted_head_is_found_and_never_recreated_over_records(database_url: str) -> None:
    db = filled(database_url)
    with db.session() as session:
        session.execute(delete(AuditHead))
    report = verify(db)
    assert not report.ok and "head row is missing" in report.reason
    db.close()
    reopened = Database(make_engine(database_url))  # start-up must not recreate it
    assert not verify(reopened).ok
    # Nor may a writer: the next record refuses to start a new chain.
    with pytest.raises(RuntimeError, match="head row is missing"), reopened.session() as session:
        audit.record(session, audit.AuditEvent.APPLICATION_START, actor="RADNODE")
    assert not verify(reopened).ok
    reopened.close()


def test_http_audit_query_limit_and_dates(node_runner: NodeRunner) -> None:
    node_runner.configure_receive_only()
    node_runner.start()
    for _ in range(3):
        echoed = run_tool(["echoscu", "-aec", "RADNODE", LOOPBACK, str(node_runner.port)])
        assert echoed.returncode == 0, echoed.stderr
    accepted = "/audit?event=association-accepted"
    everything = wait_until(
        lambda: (r := node_runner.http(accepted)) and len(r) == 3 and r, 10, "three records"
    )
    latest = node_runner.http(f"{accepted}&limit=2")
    assert [r["id"] for r in latest] == [r["id"] for r in everything[-2:]]
    today = utcnow().date()
    days = f"since={today - dt.timedelta(days=1)}&until={today}"
    assert len(node_runner.http(f"/audit?event=application-start&{days}&limit=5")) == 1
    with pytest.raises(urllib.error.HTTPError) as refused:
        node_runner.http(f"{accepted}&limit=0")
    assert refused.value.code == 400
    assert "limit must be at least 1" in refused.value.read().decode()
    # Each query is audited with every filter it used, the limit too.
    queries = node_runner.http("/audit?event=query&limit=1")
    assert queries[0]["detail"]["filters"] == {
        "event": "application-start",
        **dict(item.split("=") for item in days.split("&")),
        "limit": "5",
    }
