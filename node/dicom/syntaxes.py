"""Transfer syntaxes the node accepts and proposes (PS3.5 Annex A)."""

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

#: Accepted on receive: the uncompressed syntaxes and the common compressed
#: ones, whose pixels pydicom decodes through the pylibjpeg plugins.
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

#: Proposed on send: outputs are written and sent in Explicit VR Little
#: Endian only. Converted to Implicit VR, their private elements would reach
#: the peer as UN and the digital signature would no longer verify.
SEND_TRANSFER_SYNTAXES: list[UID] = [ExplicitVRLittleEndian]
