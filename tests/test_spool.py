"""Atomic, durable file writes: the content, the mode, and no temporary left behind."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from node import spool
from node.errors import StorageError
from node.spool import write_atomic


def test_writes_all_chunks_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "study" / "series" / "1.2.3.dcm"
    chunks = [b"\0" * 128, b"DICM", os.urandom(300), os.urandom(600_000)]
    assert write_atomic(target, chunks, mode=0o640) == sum(map(len, chunks))
    assert target.read_bytes() == b"".join(chunks)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(target.parent) == [target.name]


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_atomic(target, [b"old"], mode=0o600)
    write_atomic(target, [b"new", b" key"], mode=0o600)
    assert target.read_bytes() == b"new key"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_temporary_left_by_an_earlier_process_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "1.2.3.dcm"
    sequence = iter(range(5))
    monkeypatch.setattr(spool, "_TEMPORARY", sequence)
    stale = tmp_path / f".{target.name}.{os.getpid()}-0.tmp"
    stale.write_bytes(b"left by a crash")
    write_atomic(target, [b"instance"])
    assert target.read_bytes() == b"instance"
    assert stale.read_bytes() == b"left by a crash"
    assert sorted(os.listdir(tmp_path)) == sorted([stale.name, target.name])


def test_a_failure_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "in-the-way" / "1.2.3.dcm"
    target.mkdir(parents=True)  # a folder where the file belongs: the rename fails
    with pytest.raises(StorageError, match=r"cannot write 1\.2\.3\.dcm"):
        write_atomic(target, [b"instance"])
    assert os.listdir(target.parent) == [target.name]


def test_stale_temporaries_are_removed_and_young_ones_kept(tmp_path: Path) -> None:
    folder = tmp_path / "study" / "series"
    write_atomic(folder / "1.2.3.dcm", [b"instance"])
    stale = folder / ".1.2.4.dcm.4242-0.tmp"
    young = folder / ".1.2.5.dcm.4243-0.tmp"
    for path in (stale, young):
        path.write_bytes(b"cut off")
    an_hour_ago = time.time() - spool.STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (an_hour_ago, an_hour_ago))
    # Only files named as write_atomic names its temporaries are touched.
    others = [folder / ".notes.tmp", folder / ".1.2.6.dcm.tmp", folder / ".1.2.7.dcm.1-x.tmp"]
    for other in others:
        other.write_bytes(b"not ours")
        os.utime(other, (an_hour_ago, an_hour_ago))
    kept = ["1.2.3.dcm", *(o.name for o in others)]
    assert spool.remove_stale_temporaries([folder, tmp_path / "missing"]) == 1
    assert sorted(os.listdir(folder)) == sorted([*kept, young.name])
    assert spool.remove_stale_temporaries([folder], max_age=0.0) == 1
    assert sorted(os.listdir(folder)) == sorted(kept)


def test_a_temporary_that_cannot_be_removed_is_left_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stale = tmp_path / ".1.2.4.dcm.4242-0.tmp"
    stale.write_bytes(b"cut off")
    long_ago = time.time() - 2 * spool.STALE_TEMPORARY_SECONDS
    os.utime(stale, (long_ago, long_ago))

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert spool.remove_stale_temporaries([tmp_path]) == 0
    assert stale.exists()
    assert "cannot remove temporary file .1.2.4.dcm.4242-0.tmp: Permission denied" in caplog.text
