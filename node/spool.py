"""The spool: durable files of received instances and of the node's outputs.

A file is written to a temporary name, fsync'd, renamed into place and its
directory fsync'd, so after :meth:`Spool.write` returns the instance survives
a crash of the process or of the machine.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from node.errors import StorageError

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Numbers this process's temporary files (``next`` is atomic in CPython).
_TEMPORARY = itertools.count()
#: What :func:`_create_temporary` names them: ``.<name>.<pid>-<n>.tmp``.
_TEMPORARY_NAME = re.compile(r"^\..+\.[0-9]+-[0-9]+\.tmp$")


def check_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a well-formed UID (PS3.5 9.1), else raise.

    UIDs name spool files and folders, so this check also keeps a hostile
    dataset from writing outside the spool.
    """
    if not value or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{what} {value!r} is not a valid UID")
    return value


def fsync_dir(path: Path) -> None:
    """Make entries created or renamed in ``path`` durable (POSIX: they are its data)."""
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
        fsync_dir(folder.parent)


def write_atomic(path: Path, chunks: Iterable[bytes], mode: int = 0o644) -> int:
    """Write ``chunks`` to ``path`` atomically and durably; return the size.

    The file is written under a unique temporary name in the same folder
    (created with ``mode`` from the start, so a key is never readable by
    others, not even briefly), fsync'd, renamed over ``path``, and the folder
    fsync'd: a crash leaves the old file or the new one, never a part.

    Raises
    ------
    StorageError
        Naming the file and the operating system's reason.
    """
    data = list(chunks)
    size = sum(len(chunk) for chunk in data)
    try:
        _make_dirs(path.parent)
        tmp, fd = _create_temporary(path)
    except OSError as exc:
        raise StorageError(f"cannot create {path.name}: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, mode)
            written = os.writev(fd, data)
            if written < size:  # a short write: the rest, one call at a time
                rest = memoryview(b"".join(data))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:  # whatever stops it, no temporary file is left behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path.name}: {exc.strerror}") from exc
        raise
    return size


#: A temporary file older than this was left by a process that died while
#: writing it (a write takes milliseconds); another replica sharing the
#: folder may be writing younger ones.
STALE_TEMPORARY_SECONDS = 3600.0


def remove_stale_temporaries(
    folders: Iterable[Path], max_age: float = STALE_TEMPORARY_SECONDS
) -> int:
    """Delete temporaries of :func:`write_atomic` older than ``max_age`` seconds.

    A process that dies between creating its temporary file and renaming it
    leaves the file behind under its hidden ``.<name>.<pid>-<n>.tmp`` name. It
    was never answered Success for (the rename comes first), so it holds
    nothing the node owes anyone. Returns how many were deleted.
    """
    removed = 0
    cutoff = time.time() - max_age
    for folder in folders:
        for path in folder.glob(".*.tmp"):
            if not _TEMPORARY_NAME.match(path.name):
                continue
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # removed meanwhile by another replica
                continue
            except OSError as exc:  # left for the next start; nothing depends on it
                logger.warning("cannot remove temporary file %s: %s", path.name, exc.strerror)
    return removed


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file beside ``path``, named for this process, open for writing.

    Created with mode 0600; a name left by an earlier process with the same
    process ID is skipped, never reused.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_TEMPORARY)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue


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
