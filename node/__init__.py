"""radnode: a DICOM node that enhances selected series and sends them back."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radnode")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

#: Private creator of radnode's private block in every output (DESIGN.md).
PRIVATE_CREATOR = "RADNODE 1"
#: Manufacturer written in ContributingEquipmentSequence; also how the node
#: recognises its own outputs when a PACS forwards them back.
MANUFACTURER = "radnode"
