"""Deterministic UIDs of a job's outputs (PS3.5 9.1, B.2)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pydicom.uid import generate_uid


def output_uids(
    source_series_uid: str,
    source_sop_uids: Sequence[str],
    pipeline: str,
    model_version: str,
    *,
    variant: str = "",
    root: str | None = None,
) -> tuple[str, list[str]]:
    """Deterministic Series and SOP Instance UIDs of a job's outputs.

    Each UID is pydicom's ``generate_uid`` with entropy sources: ``root``
    (the site's UID root, or 2.25 when ``None``) followed by a number taken
    from a SHA-512 of the source UIDs, the pipeline name and the model
    version (at most 64 characters, PS3.5 9.1). Running a
    job again thus replaces its result in the PACS instead of duplicating it,
    while another pipeline or model version gives a new series.

    Parameters
    ----------
    source_series_uid
        Series Instance UID of the source series.
    source_sop_uids
        SOP Instance UIDs of the source slices, in output order.
    pipeline
        Registered pipeline name.
    model_version
        Model version of the result.
    variant
        Anything else that makes a different object from the same input
        (e.g. ``"derived"`` output, whose SOP Class differs from SC), so that
        one UID never names two SOP Classes. Empty for the default output.

    Returns
    -------
    series_uid, sop_uids
        The output series UID and one SOP Instance UID per source UID.
    """
    base = ["radnode", source_series_uid, pipeline, model_version]
    if variant:
        base.append(variant)
    series_uid = _derived_uid(root, [*base, "series"])
    sop_uids = [_derived_uid(root, [*base, "instance", uid]) for uid in source_sop_uids]
    return str(series_uid), [str(u) for u in sop_uids]


#: Namespace of radnode's name-based (version 5) UUIDs.
_UUID_NAMESPACE = uuid.UUID("5d0c2f0e-6f1b-5a55-9a37-7261646e6f64")


def _derived_uid(root: str | None, parts: Sequence[str]) -> str:
    """A UID that depends only on ``parts``: under ``root``, or 2.25 + UUIDv5.

    pydicom's ``generate_uid`` draws a random UUID when no prefix is given,
    so the 2.25 form (PS3.5 B.2) is built here from a name-based UUID.
    """
    if root is None:
        name = "\x1f".join(str(p) for p in parts)
        return f"2.25.{uuid.uuid5(_UUID_NAMESPACE, name).int}"
    return str(generate_uid(prefix=root, entropy_srcs=[str(p) for p in parts]))
