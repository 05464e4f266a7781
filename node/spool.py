"""The spool: durable files of received instances and of the node's outputs.

A file is written to a temporary name, fsync'd, renamed into place and its
directory fsync'd, so after :meth:`Spool.write` returns the instance survives
a crash of the process or of the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from node.errors import StorageError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a well-formed UID (PS3.5 9.1), else raise.

    UIDs name spool files and folders, so this check also keeps a hostile
    dataset from writing outside the spool.
    """
    if not value or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{what} {value!r} is not a valid UID")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each entry made durable."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _fsync_dir(folder.parent)


def write_atomic(path: Path, chunks: list[bytes]) -> int:
    """Write ``chunks`` to ``path`` atomically and durably; return the size."""
    # A unique temporary name: two associations may store the same new
    # instance at the same moment.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    size = 0
    try:
        _make_dirs(path.parent)
        with tmp.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path.name}: {exc.strerror}") from exc
    return size


class Spool:
    """Received instances under ``root/<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the spool root."""
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def path(self, relative: str) -> Path:
        """The absolute path of a spooled file."""
        return self.root / relative

    def write(self, relative: str, chunks: list[bytes]) -> int:
        """Store one instance durably; return its size in bytes."""
        return write_atomic(self.root / relative, chunks)

    def files(self) -> Iterator[Path]:
        """Every spooled instance file (for re-indexing after a crash)."""
        yield from self.root.glob("*/*/*.dcm")

    def remove_series(self, study_uid: str, series_uid: str) -> None:
        """Delete one series' folder (retention)."""
        shutil.rmtree(self.root / study_uid / series_uid, ignore_errors=True)
