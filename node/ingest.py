"""Accepting one received instance: validate, store durably, index.

Kept apart from the DIMSE handler so the handler stays thin (validate,
persist, record, answer) and so the rules can be tested without a network.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import Table, bindparam, case, select, update

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.db import Database, Instance, Series, upsert, utcnow
from node.errors import InvalidInstanceError
from node.spool import Spool, check_uid

logger = logging.getLogger(__name__)

_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: first item of encapsulated pixels


@dataclass(frozen=True)
class Identity:
    """The UIDs and identifiers that place an instance in the index."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    patient_id: str


@dataclass(frozen=True)
class Accepted:
    """What :meth:`Ingest.accept` did with an instance."""

    identity: Identity
    duplicate: bool
    origin: str
    #: Where the indexed copy lives, relative to the spool root.
    path: str


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise InvalidInstanceError(f"missing {keyword}")
    try:
        return check_uid(str(value).strip(), keyword)
    except ValueError as exc:
        raise InvalidInstanceError(str(exc)) from None


def _check_pixels(ds: Dataset, transfer_syntax: UID) -> None:
    """Pixel Data must fit Rows, Columns, Samples, Bits and Frames (PS3.3 C.7.6.3)."""
    if "PixelData" not in ds:
        return
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise InvalidInstanceError(f"Pixel Data present but {', '.join(missing)} missing")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if rows <= 0 or cols <= 0 or bits not in (1, 8, 16, 32, 64):
        raise InvalidInstanceError(
            f"invalid image size Rows={rows} Columns={cols} BitsAllocated={bits}"
        )
    bits_stored = ds.get("BitsStored")
    if bits_stored is not None and not 1 <= int(bits_stored) <= bits:
        raise InvalidInstanceError(f"BitsStored {bits_stored} does not fit BitsAllocated {bits}")
    value = ds["PixelData"].value
    if transfer_syntax.is_encapsulated:
        if not isinstance(value, bytes) or not value.startswith(_ITEM_TAG):
            raise InvalidInstanceError(
                f"encapsulated Pixel Data is not a sequence of items ({transfer_syntax.name})"
            )
        return
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma subsampled: two values per pixel (PS3.3 C.7.6.3.1.2)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = len(value) if value is not None else 0
    if actual < expected:
        raise InvalidInstanceError(
            f"Pixel Data has {actual} bytes; Rows {rows} x Columns {cols} x Samples {samples}"
            f" x Frames {frames} x {bits} bits needs {expected}"
        )


def identify(ds: Dataset, transfer_syntax: UID) -> Identity:
    """Validate a received dataset and return its identity.

    Raises
    ------
    InvalidInstanceError
        When the dataset cannot be read, lacks a UID, or its pixels do not
        match its image attributes.
    """
    try:
        identity = Identity(
            sop_class_uid=_required_uid(ds, "SOPClassUID"),
            sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
            study_uid=_required_uid(ds, "StudyInstanceUID"),
            series_uid=_required_uid(ds, "SeriesInstanceUID"),
            modality=str(ds.get("Modality", "") or "")[:16],
            patient_id=str(ds.get("PatientID", "") or "")[:64],
        )
        _check_pixels(ds, transfer_syntax)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInstanceError(f"unreadable dataset: {type(exc).__name__}: {exc}") from exc
    return identity


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element in Explicit VR Little Endian with a 2-byte length."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """File Meta Information (PS3.10 7.1) of a received instance, encoded directly.

    Written for every received instance, so it skips building and writing a
    pydicom dataset. The implementation is radnode's (the writer of the file);
    Source Application Entity Title is the sender's.
    """
    body = b"".join(
        [
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short_element(0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
            _short_element(0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
            _short_element(0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
            _short_element(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _short_element(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
            _short_element(0x0016, b"AE", _pad(source_ae[:16] or "UNKNOWN", b" ")),
        ]
    )
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def encode_file(meta: bytes, raw_dataset: bytes) -> list[bytes]:
    """The DICOM File Format (PS3.10 7.1): preamble, prefix, meta, dataset."""
    return [b"\x00" * 128, b"DICM", meta, raw_dataset]


class _IndexStatements:
    """The index's per-instance statements, built once (this runs per C-STORE)."""

    def __init__(self, db: Database) -> None:
        instances = cast(Table, Instance.__table__)
        series = cast(Table, Series.__table__)
        self.insert_instance = upsert(db, instances).on_conflict_do_nothing()
        self.instance_path = select(instances.c.path).where(
            instances.c.sop_instance_uid == bindparam("uid")
        )
        # A late instance of a completed series starts a new generation:
        # completion runs again and its outputs replace the earlier ones.
        late = series.c.state != "receiving"
        self.count_instance = (
            update(series)
            .where(series.c.series_uid == bindparam("uid"))
            .values(
                instance_count=series.c.instance_count + 1,
                last_received_at=bindparam("now"),
                generation=case((late, series.c.generation + 1), else_=series.c.generation),
                state="receiving",
            )
        )
        # The first instance of a series; another association may insert it
        # at the same moment (PostgreSQL), which then counts this one.
        self.insert_series = (
            upsert(db, series)
            .values(
                series_uid=bindparam("uid"),
                study_uid=bindparam("study_uid"),
                modality=bindparam("modality"),
                patient_id=bindparam("patient_id"),
                origin=bindparam("origin"),
                state="receiving",
                generation=1,
                instance_count=1,
                first_received_at=bindparam("now"),
                last_received_at=bindparam("now"),
            )
            .on_conflict_do_update(
                index_elements=[series.c.series_uid],
                set_={
                    "instance_count": series.c.instance_count + 1,
                    "last_received_at": bindparam("now"),
                },
            )
        )


class Ingest:
    """Stores received instances in the spool and indexes them."""

    def __init__(
        self, db: Database, spool: Spool, is_own_output: Callable[[Dataset], bool]
    ) -> None:
        self.db = db
        self.spool = spool
        self.is_own_output = is_own_output
        self._statements = _IndexStatements(db)

    def accept(
        self,
        ds: Dataset,
        raw_dataset: bytes,
        transfer_syntax: str,
        calling_ae: str,
        expected: tuple[str, str] | None = None,
    ) -> Accepted:
        """Validate, write durably, then index one instance.

        Returns only once the file is fsync'd and the index committed, so the
        caller may answer Success. A SOP Instance UID already indexed is not
        stored again. ``expected`` is the (SOP Class, SOP Instance) UID pair
        of the C-STORE request, which the dataset must repeat (PS3.4 B.2.3).
        """
        ts = UID(transfer_syntax)
        identity = identify(ds, ts)
        if expected is not None:
            if identity.sop_class_uid != expected[0]:
                raise InvalidInstanceError(
                    f"SOP Class UID {identity.sop_class_uid} differs from the request's"
                )
            if identity.sop_instance_uid != expected[1]:
                raise InvalidInstanceError(
                    f"SOP Instance UID {identity.sop_instance_uid} differs from the request's"
                )
        origin = "radnode" if self.is_own_output(ds) else "external"
        relative = self.spool.relative_path(
            identity.study_uid, identity.series_uid, identity.sop_instance_uid
        )
        # A file already in the spool is the first copy of this instance:
        # keep it (the index below then reports the duplicate).
        target = self.spool.path(relative)
        if target.exists():
            return self._index(
                identity, relative, target.stat().st_size, str(ts), calling_ae, origin
            )
        meta = encode_file_meta(
            identity.sop_class_uid, identity.sop_instance_uid, str(ts), calling_ae
        )
        # Durable before the index transaction starts: on SQLite that
        # transaction locks the whole index, so it never waits for a disk.
        size = self.spool.write(relative, encode_file(meta, raw_dataset))
        # A failure to index leaves the file for the next start's re-index
        # (or the peer's retry, which then finds it).
        accepted = self._index(identity, relative, size, str(ts), calling_ae, origin)
        if accepted.duplicate and accepted.path != relative:
            # The UID is indexed under another study or series: keep the
            # first copy only, leave no unindexed file behind.
            target.unlink(missing_ok=True)
        return accepted

    def reindex_spool(self) -> int:
        """Index spooled files the index lacks (a crash between write and commit).

        The peer was never answered Success for such a file and will send it
        again; indexing it now keeps it from being stored twice.
        """
        from pydicom import dcmread

        with self.db.session() as session:
            known = set(session.execute(select(Instance.path)).scalars())
        added = 0
        for path in self.spool.files():
            relative = str(path.relative_to(self.spool.root))
            if relative in known:
                continue
            try:
                ds = dcmread(path)
                ts = UID(str(ds.file_meta.TransferSyntaxUID))
                identity = identify(ds, ts)
            except (InvalidInstanceError, InvalidDicomError, AttributeError, EOFError) as exc:
                # Never answered Success (it was not indexed): set it aside.
                logger.error("unreadable spooled file set aside: %s", type(exc).__name__)
                path.rename(path.with_suffix(".unreadable"))
                continue
            # A database error here stops start-up (retried at the next start)
            # rather than setting a good instance aside.
            origin = "radnode" if self.is_own_output(ds) else "external"
            self._index(identity, relative, path.stat().st_size, str(ts), "", origin)
            added += 1
        return added

    def _index(
        self,
        identity: Identity,
        relative: str,
        size: int,
        transfer_syntax: str,
        calling_ae: str,
        origin: str,
    ) -> Accepted:
        """Index one spooled instance; a duplicate reports where its first copy is."""
        now = utcnow()
        statements = self._statements
        with self.db.engine.begin() as conn:
            inserted = conn.execute(
                statements.insert_instance,
                {
                    "sop_instance_uid": identity.sop_instance_uid,
                    "sop_class_uid": identity.sop_class_uid,
                    "study_uid": identity.study_uid,
                    "series_uid": identity.series_uid,
                    "path": relative,
                    "transfer_syntax": transfer_syntax,
                    "size": size,
                    "calling_ae": calling_ae,
                    "received_at": now,
                },
            )
            if not inserted.rowcount:
                first = conn.execute(
                    statements.instance_path, {"uid": identity.sop_instance_uid}
                ).scalar_one()
                return Accepted(identity, duplicate=True, origin=origin, path=first)
            series = {"uid": identity.series_uid, "now": now}
            if not conn.execute(statements.count_instance, series).rowcount:
                conn.execute(
                    statements.insert_series,
                    {
                        **series,
                        "study_uid": identity.study_uid,
                        "modality": identity.modality,
                        "patient_id": identity.patient_id,
                        "origin": origin,
                    },
                )
        return Accepted(identity, duplicate=False, origin=origin, path=relative)
