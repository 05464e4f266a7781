"""The benchmark's bare pynetdicom receiver (``deploy/bare_scp.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from node.peers import LOOPBACK, free_port, run_tool, spawn, wait_for_port
from node.samples import CT_128, make_series, write_series

BARE_SCP = Path(__file__).resolve().parents[1] / "deploy" / "bare_scp.py"


def test_the_bare_receiver_answers_success_and_keeps_nothing(tmp_path: Path) -> None:
    series = tmp_path / "series"
    write_series(make_series(CT_128, slices=3), series)
    workdir = tmp_path / "bare"
    workdir.mkdir()
    port = free_port()
    proc = spawn([sys.executable, str(BARE_SCP), str(port)], workdir / "bare.log", cwd=workdir)
    try:
        wait_for_port(port, proc)
        sent = run_tool(
            ["storescu", "-v", "-aec", "BARESCP", "+sd", "+r", LOOPBACK, str(port), str(series)]
        )
    finally:
        proc.terminate()
        proc.wait(20)
    assert sent.returncode == 0, sent.stderr
    assert (
        sent.stdout.count("Received Store Response (Success)")
        + sent.stderr.count("Received Store Response (Success)")
        == 3
    )
    assert [p.name for p in workdir.iterdir()] == ["bare.log"]


def test_the_bare_receiver_wants_a_port(tmp_path: Path) -> None:
    log = tmp_path / "usage.log"
    proc = spawn([sys.executable, str(BARE_SCP), "not-a-port"], log)
    assert proc.wait(60) == 2
    assert "usage: bare_scp.py PORT" in log.read_text()
