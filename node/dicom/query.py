"""Implementation of the node's Query/Retrieve - FIND SCP over its index (PS3.4 C.4.1).

Answers Study Root C-FIND (and Patient Root below the PATIENT level) at the
STUDY, SERIES and IMAGE levels for what the node holds (received series and its own outputs that
came back). Unique keys and Modality/PatientID narrow the search in the
index; every other key is matched against the header of one stored instance
per entity with the PS3.4 C.2.2.2 rules this node supports: universal (empty),
single value, list of UIDs, wildcard (``*``, ``?``) and date/time ranges.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from sqlalchemy import func, select

from node.db import Database, Instance, Series
from node.spool import Spool

logger = logging.getLogger(__name__)

LEVELS = ("STUDY", "SERIES", "IMAGE")
_COUNTS = {
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
}
_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "ModalitiesInStudy", *_COUNTS}


class QueryError(ValueError):
    """The identifier cannot be answered (unknown level, bad key)."""


@dataclass
class _Entity:
    study_uid: str
    series_uid: str | None
    path: str
    series_count: int = 0
    study_instances: int = 0
    series_instances: int = 0
    modalities: tuple[str, ...] = ()


def _text(value: object) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _range_holds(actual: str, condition: str) -> bool:
    low, _, high = condition.partition("-")
    actual = actual.strip()
    if not actual:
        return False
    return (not low or actual >= low.strip()) and (not high or actual <= high.strip())


def value_matches(keyword: str, condition: object, actual: object) -> bool:
    """Whether ``actual`` meets the query value ``condition`` (PS3.4 C.2.2.2)."""
    wanted = _text(condition).strip()
    if wanted in ("", "*"):
        return True  # universal matching
    have = _text(actual).strip()
    vr = dictionary_VR(keyword) if keyword else ""
    if vr == "UI":
        return have in wanted.split("\\")  # list of UID matching
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        return _range_holds(have, wanted)
    if "*" in wanted or "?" in wanted:
        pattern = wanted.replace("[", "[[]")
        values = have.split("\\") if have else [""]
        return any(fnmatch.fnmatchcase(v, pattern) for v in values)
    if vr == "PN":
        return have.upper() == wanted.upper()
    return have == wanted or wanted in have.split("\\")


def _level(identifier: Dataset) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    return level


def _candidates(db: Database, identifier: Dataset, level: str) -> list[_Entity]:
    study = _text(identifier.get("StudyInstanceUID", "")).strip()
    series = _text(identifier.get("SeriesInstanceUID", "")).strip()
    modality = _text(identifier.get("Modality", "")).strip()
    stmt = select(Series).where(Series.state != "purged")
    if study:
        stmt = stmt.where(Series.study_uid.in_(study.split("\\")))
    if series and level in ("SERIES", "IMAGE"):
        stmt = stmt.where(Series.series_uid.in_(series.split("\\")))
    if modality and "*" not in modality and "?" not in modality and level != "STUDY":
        stmt = stmt.where(Series.modality == modality)
    # A subquery, not a list of UIDs: the index may hold more series than a
    # statement may bind values.
    matching = stmt.with_only_columns(Series.series_uid).scalar_subquery()
    with db.read() as session:
        if level == "IMAGE":
            images = session.execute(
                select(Instance.study_uid, Instance.series_uid, Instance.path)
                .where(Instance.series_uid.in_(matching))
                .order_by(Instance.received_at)
            ).all()
            return [_Entity(s, se, p) for s, se, p in images]
        rows = session.execute(stmt.order_by(Series.first_received_at)).scalars().all()
        # Instances per series and one stored file to read the attributes from.
        stored = {
            uid: (count, path)
            for uid, count, path in session.execute(
                select(Instance.series_uid, func.count(), func.min(Instance.path))
                .where(Instance.series_uid.in_(matching))
                .group_by(Instance.series_uid)
            ).all()
        }
    found: list[_Entity] = []
    studies: dict[str, _Entity] = {}
    for r in rows:
        if r.series_uid not in stored:
            continue
        count, path = stored[r.series_uid]
        if level == "SERIES":
            found.append(_Entity(r.study_uid, r.series_uid, path, series_instances=count))
            continue
        known = studies.setdefault(r.study_uid, _Entity(r.study_uid, None, path))
        known.series_count += 1
        known.study_instances += count
        if r.modality:
            known.modalities = tuple(sorted({*known.modalities, r.modality}))
    return found if level == "SERIES" else list(studies.values())


def find(db: Database, spool: Spool, identifier: Dataset) -> Iterator[Dataset]:
    """Yield one response identifier per matching entity.

    Raises
    ------
    QueryError
        When the query level is missing or unknown.
    """
    level = _level(identifier)
    query_keys = [e.keyword for e in identifier if e.keyword and e.keyword not in _SKIP]
    wanted = [m for m in _text(identifier.get("ModalitiesInStudy", "")).split("\\") if m]
    for entity in _candidates(db, identifier, level):
        try:
            header = dcmread(spool.path(entity.path), stop_before_pixels=True)
        except OSError:
            logger.warning("a stored instance is missing; skipped in a C-FIND response")
            continue
        if not all(value_matches(k, identifier.get(k), header.get(k)) for k in query_keys):
            continue
        # Modalities in Study is a study attribute the index computes (C.6.2.1.2):
        # it matches when any requested modality is among the study's.
        if (
            level == "STUDY"
            and wanted
            and not any(value_matches("Modality", m, list(entity.modalities)) for m in wanted)
        ):
            continue
        response = Dataset()
        response.QueryRetrieveLevel = level
        if "SpecificCharacterSet" in header:
            response.SpecificCharacterSet = header.SpecificCharacterSet
        for keyword in query_keys:
            setattr(response, keyword, header.get(keyword, ""))
        counts = {
            "NumberOfStudyRelatedSeries": entity.series_count,
            "NumberOfStudyRelatedInstances": entity.study_instances,
            "NumberOfSeriesRelatedInstances": entity.series_instances,
        }
        for keyword, count in counts.items():
            if keyword in identifier:
                setattr(response, keyword, count)
        if level == "STUDY" and "ModalitiesInStudy" in identifier:
            response.ModalitiesInStudy = list(entity.modalities)
        yield response
