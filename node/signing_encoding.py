"""Byte stream fed into the MAC of a DICOM Digital Signature (PS3.3 C.12.1.1.3.1).

A DICOM Digital Signature does not sign the bytes of a file: it signs a
canonical re-encoding of selected Data Elements in the MAC Calculation
Transfer Syntax, which radnode fixes to Explicit VR Little Endian
(1.2.840.10008.1.2.1; PS3.5 Section 7.1.2). This module produces that byte
stream, the same one dcmtk's ``dcmsign`` feeds into its MAC (checked against
``dcmsign --dump``):

* a leaf Data Element is encoded exactly as PS3.5 7.1.2 writes it: tag, VR,
  (two reserved bytes and a 32-bit length for OB, OW, SQ, UN, UT, ... or a
  16-bit length otherwise) and the value padded to even length;
* a Sequence of Items (PS3.5 7.5) contributes its tag, ``SQ`` and the two
  reserved bytes but *no* length, each Item its Item tag (FFFE,E000) with no
  length, the Data Elements of the Item, and finally the Sequence Delimitation
  Item tag (FFFE,E0DD) with no length. Item Delimitation Items (FFFE,E00D) are
  left out: PS3.3 C.12.1.1.3.1.1 includes only the Item tags and the Sequence
  Delimitation Item in the implicit list of signed elements, so that explicit
  and undefined length encodings of the same sequence give the same MAC.

Data Elements that can never be signed (PS3.3 C.12.1.1.3.1.1) are skipped at
every nesting level: group lengths, Length to End, groups below 0008 (command
and File Meta Information), the Digital Signatures Sequence group FFFA, the
MAC Parameters Sequence, Data Set Trailing Padding and delimiters. Elements
with VR UN cannot be signed either: their encoding depends on the transfer
syntax they were read with and is undefined in Explicit VR Little Endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.tag import BaseTag, Tag

from node.errors import SigningError

#: MAC Calculation Transfer Syntax UID: Explicit VR Little Endian (PS3.5 A.2).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: VRs whose Explicit VR encoding has two reserved bytes and a 32-bit length
#: (PS3.5 Table 7.1-1); all other VRs have a 16-bit length.
_LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)

_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
_SEQUENCE_DELIMITER_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)

#: Tags that carry signatures; excluded from every MAC (PS3.3 C.12.1.1.3.1.1).
MAC_PARAMETERS_SEQUENCE = Tag(0x4FFE, 0x0001)
DIGITAL_SIGNATURES_SEQUENCE = Tag(0xFFFA, 0xFFFA)


def is_signable_tag(tag: BaseTag) -> bool:
    """Tell whether PS3.3 C.12.1.1.3.1.1 allows a tag in Data Elements Signed.

    Parameters
    ----------
    tag : pydicom.tag.BaseTag
        The Data Element tag.

    Returns
    -------
    bool
        ``False`` for group length (gggg,0000) and Length to End (0008,0001)
        elements, which change whenever an unsigned element changes; for groups
        below 0008 (command and File Meta Information, not part of the Data
        Set); for the Digital Signatures Sequence group FFFA and the MAC
        Parameters Sequence (4FFE,0001), which hold the signatures themselves;
        for Data Set Trailing Padding (FFFC,FFFC) and the delimitation items.
    """
    group, element = tag.group, tag.element
    if element == 0x0000 or group < 0x0008 or group == 0xFFFA:
        return False
    if tag in (Tag(0x0008, 0x0001), MAC_PARAMETERS_SEQUENCE, Tag(0xFFFC, 0xFFFC)):
        return False
    return not (group == 0xFFFE and element in (0xE00D, 0xE0DD))


def _element_vr(ds: Dataset, tag: BaseTag) -> str | None:
    raw = ds.get_item(tag)
    return None if raw is None else raw.VR


def is_signable_element(ds: Dataset, tag: BaseTag) -> bool:
    """Tell whether the element ``tag`` of ``ds`` can be part of a signature.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The Data Set (or sequence Item) holding the element.
    tag : pydicom.tag.BaseTag
        The element's tag.

    Returns
    -------
    bool
        ``True`` when the tag is signable (:func:`is_signable_tag`), its VR is
        not UN and, for a sequence, no element nested anywhere in it has VR UN
        (a signed sequence covers everything nested in it, so one unknown element makes
        the whole sequence unsignable; dcmtk applies the same rule).
    """
    if not is_signable_tag(tag):
        return False
    vr = _element_vr(ds, tag)
    if vr == "UN":
        return False
    if vr == "SQ" or (vr is None and tag in ds and ds[tag].VR == "SQ"):
        for item in ds[tag].value:
            for inner in sorted(item.keys()):
                if is_signable_tag(inner) and not is_signable_element(item, inner):
                    return False
    return True


def signable_tags(ds: Dataset) -> list[BaseTag]:
    """List the signable top-level tags of ``ds`` in Data Set order.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The Data Set to be signed.

    Returns
    -------
    list of pydicom.tag.BaseTag
        Tags in ascending order, as Data Elements Signed must list them
        (PS3.3 C.12.1.1.3.1.1).
    """
    return [tag for tag in sorted(ds.keys()) if is_signable_element(ds, tag)]


def _encodings(ds: Dataset, parent: str | list[str] | None) -> str | list[str] | None:
    # Specific Character Set applies to the Data Set it is in and to the
    # items nested in it unless an item sets its own (PS3.5 6.1.2.5.1).
    charset = ds.get("SpecificCharacterSet")
    if charset is None:
        return parent
    return list(charset) if not isinstance(charset, str) else charset


def _raw_explicit_le(raw: DataElement | RawDataElement) -> bytes | None:
    """Return the header + value of a raw element read as Explicit VR LE."""
    if not isinstance(raw, RawDataElement):
        return None
    if raw.is_implicit_VR or not raw.is_little_endian or raw.VR is None:
        return None
    if raw.VR in ("SQ", "UN") or len(raw.VR) != 2 or raw.length == 0xFFFFFFFF:
        return None
    value = raw.value if raw.value is not None else b""
    if not isinstance(value, bytes):
        return None
    return _header(raw.tag, raw.VR, len(value)) + value


def _header(tag: BaseTag, vr: str, length: int) -> bytes:
    head = struct.pack("<HH", tag.group, tag.element) + vr.encode("ascii")
    if vr in _LONG_LENGTH_VRS:
        return head + struct.pack("<HL", 0, length)
    return head + struct.pack("<H", length)


def _encode_leaf(ds: Dataset, tag: BaseTag, encodings: str | list[str] | None) -> bytes:
    raw = ds.get_item(tag)
    if raw is None:
        raise SigningError(f"element {tag} vanished while it was being encoded")
    # Values read from an Explicit VR Little Endian file are already in the
    # MAC transfer syntax: use their bytes untouched, so that verification
    # does not depend on how pydicom would re-format a decoded value.
    direct = _raw_explicit_le(raw)
    if direct is not None:
        return direct
    elem: DataElement | RawDataElement = ds[tag]
    if elem.VR is not None and " or " in elem.VR:
        # "US or SS", "OB or OW", ...: resolved from Pixel Representation /
        # Bits Allocated as PS3.5 Annex A requires for explicit VR encodings.
        elem = correct_ambiguous_vr_element(DataElement(tag, elem.VR, elem.value), ds, True)
    if isinstance(elem, DataElement) and elem.is_undefined_length and elem.tag == 0x7FE00010:
        raise SigningError(
            "Pixel Data (7FE0,0010) is encapsulated (compressed); radnode signs only "
            "native pixel data in Explicit VR Little Endian"
        )
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    try:
        write_data_element(fp, elem, encodings)
    except (ValueError, NotImplementedError) as exc:
        raise SigningError(f"cannot encode element {tag} for the signature: {exc}") from exc
    return fp.getvalue()


def encode_element(ds: Dataset, tag: BaseTag, encodings: str | list[str] | None = None) -> bytes:
    """Encode one Data Element of ``ds`` as it enters the MAC.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The Data Set (or Item) holding the element.
    tag : pydicom.tag.BaseTag
        The element's tag.
    encodings : str or list of str, optional
        Specific Character Set inherited from enclosing Data Sets.

    Returns
    -------
    bytes
        Explicit VR Little Endian encoding (PS3.5 7.1.2); for a sequence the
        length-free form with Item tags and the Sequence Delimitation Item
        described in the module docstring (PS3.3 C.12.1.1.3.1.1).
    """
    encodings = _encodings(ds, encodings)
    vr = _element_vr(ds, tag)
    if vr is None or vr == "SQ":
        vr = ds[tag].VR
    if vr != "SQ":
        return _encode_leaf(ds, tag, encodings)
    out = bytearray(struct.pack("<HH", tag.group, tag.element) + b"SQ\x00\x00")
    for item in ds[tag].value:
        out += _ITEM_TAG
        out += encode_dataset(item, signable_tags(item), encodings)
    out += _SEQUENCE_DELIMITER_TAG
    return bytes(out)


def encode_dataset(
    ds: Dataset, tags: Iterable[BaseTag], encodings: str | list[str] | None = None
) -> bytes:
    """Concatenate the MAC encodings of ``tags`` of ``ds``, in the given order.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The Data Set (or Item).
    tags : iterable of pydicom.tag.BaseTag
        The elements to encode; the caller passes them in Data Set order.
    encodings : str or list of str, optional
        Specific Character Set inherited from enclosing Data Sets.

    Returns
    -------
    bytes
        The byte stream.
    """
    encodings = _encodings(ds, encodings)
    return b"".join(encode_element(ds, tag, encodings) for tag in tags)


#: Elements of a Digital Signatures Sequence item that are *not* in the MAC
#: (PS3.3 C.12.1.1.3.1.2): the certificate, the signature itself and the
#: certified timestamp, which is computed over the finished signature.
SIGNATURE_ITEM_EXCLUDED = frozenset(
    {Tag(0x0400, 0x0115), Tag(0x0400, 0x0120), Tag(0x0400, 0x0305), Tag(0x0400, 0x0310)}
)


def signature_item_tags(item: Dataset) -> Sequence[BaseTag]:
    """Tags of a Digital Signatures Sequence item that are appended to the MAC.

    Parameters
    ----------
    item : pydicom.dataset.Dataset
        An item of the Digital Signatures Sequence (FFFA,FFFA).

    Returns
    -------
    sequence of pydicom.tag.BaseTag
        MAC ID Number, Digital Signature UID, Digital Signature DateTime,
        Certificate Type, Digital Signature Purpose Code Sequence, ... in tag
        order: every signable element except Certificate of Signer, Signature,
        Certified Timestamp Type and Certified Timestamp (PS3.3 C.12.1.1.3.1.2).
    """
    return [tag for tag in signable_tags(item) if tag not in SIGNATURE_ITEM_EXCLUDED]
