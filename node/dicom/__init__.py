"""DICOM networking: the node's SCP (receive) and SCU (send)."""
