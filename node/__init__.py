"""radnode: a DICOM node that enhances selected series and sends them back."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radnode")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

#: Private creator of radnode's private block in every output (DESIGN.md).
PRIVATE_CREATOR = "RADNODE 1"
#: radnode's Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID
#: (2.25 root) fixed for the product; sent in associations and file meta.
IMPLEMENTATION_CLASS_UID = "2.25.153938332444499009106426134423728663681"
#: Implementation Version Name: at most 16 characters.
IMPLEMENTATION_VERSION_NAME = f"RADNODE_{__version__}"[:16]

#: Manufacturer written in ContributingEquipmentSequence; also how the node
#: recognises its own outputs when a PACS forwards them back.
MANUFACTURER = "radnode"
