"""Transfer syntaxes the node accepts and proposes (PS3.5 Annex A)."""

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
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

#: Proposed on send: outputs are written in Explicit VR Little Endian, the
#: syntax their digital signatures are computed in.
SEND_TRANSFER_SYNTAXES: list[UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
