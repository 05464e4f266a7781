"""radnode's enhancement pipelines: image science, independent of DICOM networking."""
