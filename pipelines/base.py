"""Pipeline protocol, volumes in physical units, results and the registry.

A pipeline takes a :class:`Volume` (voxels in physical units, HU for CT, with
its geometry) and returns a :class:`Result`. Nothing here knows about DICOM
networking: ``node`` converts datasets to volumes and results back to DICOM.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
ParamValue = str | int | float | bool


class PipelineError(Exception):
    """A pipeline could not be built or could not process its input."""


class WeightsError(PipelineError):
    """Model weights are missing or do not match their pinned SHA-256."""


class MethodKind(StrEnum):
    """How an output was produced; decides SyntheticData and equipment codes."""

    CLASSICAL = "classical"
    GENERATIVE = "generative"


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme designator, meaning), e.g. DCM 113087."""

    value: str
    scheme: str
    meaning: str


#: (113087, DCM, "Smoothing"): the derivation of a denoised image.
SMOOTHING = Code("113087", "DCM", "Smoothing")
#: (113085, DCM, "Spatial resampling"): restoration of resolution.
SPATIAL_RESAMPLING = Code("113085", "DCM", "Spatial resampling")


@dataclass(frozen=True)
class Volume:
    """A stack of 2-D slices in physical units with its geometry.

    Parameters
    ----------
    voxels
        ``float32`` array shaped ``(slices, rows, columns)``. CT in Hounsfield
        units; MR in the scanner's arbitrary magnitude units.
    modality
        DICOM Modality of the source (``"CT"``, ``"MR"``).
    unit
        ``"HU"`` for CT, ``"arbitrary"`` for MR magnitudes.
    pixel_spacing
        (row spacing, column spacing) in mm, as DICOM PixelSpacing.
    positions
        ``(slices, 3)`` ImagePositionPatient per slice in mm, or ``None`` when
        the source has no patient geometry.
    orientation
        ImageOrientationPatient (six direction cosines), or ``None``.
    meta
        Acquisition facts a pipeline may use (e.g. ``phase_encode`` = ``"ROW"``
        or ``"COL"`` for MR, ``bits_stored``); never patient identifiers.
    """

    voxels: FloatArray
    modality: str
    unit: str
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    positions: npt.NDArray[np.float64] | None = None
    orientation: tuple[float, ...] | None = None
    meta: Mapping[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise PipelineError(
                f"Volume voxels must have 3 dimensions (slices, rows, columns). "
                f"Found shape {self.voxels.shape}."
            )
        if self.voxels.dtype != np.float32:
            raise PipelineError(
                f"Volume voxels must be of type float32. Found {self.voxels.dtype}."
            )
        if self.positions is not None and self.positions.shape != (self.voxels.shape[0], 3):
            raise PipelineError(
                f"Volume positions must be shaped ({self.voxels.shape[0]}, 3). "
                f"Found {self.positions.shape}."
            )

    def with_voxels(self, voxels: FloatArray) -> Volume:
        """Return a volume with the same geometry and new voxels."""
        return Volume(
            voxels=voxels,
            modality=self.modality,
            unit=self.unit,
            pixel_spacing=self.pixel_spacing,
            positions=self.positions,
            orientation=self.orientation,
            meta=self.meta,
        )


def slice_pool() -> ThreadPoolExecutor:
    """Threads for per-slice work: NumPy, SciPy's filters and FFTs release the GIL.

    The per-slice work avoids BLAS: its own threads would compete with these.
    """
    return ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1))


@dataclass(frozen=True)
class SliceQA:
    """The QA gate's verdict on one output slice.

    A slice that does not pass is replaced by its input (passed through
    unchanged) and flagged; ``metrics`` holds the numbers the verdict used.
    """

    passed: bool
    metrics: Mapping[str, float] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """What produced an output, for provenance.

    Parameters
    ----------
    name
        Human-readable method, e.g. ``"residual BasicUNet"`` or
        ``"bilateral filter (classical)"``.
    version
        Model version; part of the deterministic output UIDs.
    kind
        Classical filter or generative (trained) model.
    weights_sha256
        SHA-256 of the weights file, ``None`` for classical methods.
    """

    name: str
    version: str
    kind: MethodKind
    weights_sha256: str | None = None


@dataclass(frozen=True)
class Result:
    """A pipeline's output volume with everything provenance needs."""

    volume: Volume
    qa: tuple[SliceQA, ...]
    model: ModelInfo
    derivation: Code
    description: str
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)

    @property
    def flagged_slices(self) -> list[int]:
        """Indices of slices the QA gate failed (passed through unchanged)."""
        return [i for i, q in enumerate(self.qa) if not q.passed]


@runtime_checkable
class Pipeline(Protocol):
    """An image-to-image enhancement of one series.

    A pipeline that loads anything lazily may also offer ``prepare()``,
    which loads it at once: the node calls it when it builds its pipelines
    at start-up, so the first series does not wait.
    """

    name: str
    modalities: tuple[str, ...]

    def model_info(self) -> ModelInfo:
        """Describe the method and its version without running it."""
        ...

    def run(self, volume: Volume) -> Result:
        """Enhance ``volume``; deterministic for the same input and weights."""
        ...


PipelineFactory = Callable[[Mapping[str, ParamValue]], Pipeline]
CommandMain = Callable[[Sequence[str]], int]
#: Validates a rule's parameters without building the pipeline (raises
#: PipelineError); the flag says whether to verify the weights they name too.
ParamCheck = Callable[[Mapping[str, ParamValue], bool], None]


@dataclass(frozen=True)
class PipelineEntry:
    """A registered pipeline: how to build it, and its optional commands.

    ``train`` and ``evaluate`` take the command-line arguments after
    ``radnode train NAME`` / ``radnode evaluate NAME`` and return an exit code.
    ``check`` validates a rule's parameters, and verifies the weights they
    name against their pinned hash when asked, without building the pipeline:
    settings validation runs it at start-up, so a wrong parameter stops the
    node before a series is received rather than failing its job.
    ``path_params`` are the parameters that hold file paths; relative ones
    are taken relative to the settings file, like every path in it.
    """

    name: str
    factory: PipelineFactory
    modalities: tuple[str, ...]
    summary: str
    train: CommandMain | None = None
    evaluate: CommandMain | None = None
    check: ParamCheck | None = None
    path_params: tuple[str, ...] = ()


class Registry:
    """Pipelines by name, with "did you mean" suggestions for typos."""

    def __init__(self) -> None:
        self._entries: dict[str, PipelineEntry] = {}

    def register(self, entry: PipelineEntry) -> None:
        """Add ``entry``; a second entry under the same name is an error."""
        if entry.name in self._entries:
            raise PipelineError(f"Pipeline {entry.name!r} is already registered.")
        self._entries[entry.name] = entry

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entry(self, name: str) -> PipelineEntry:
        """Look up ``name``; the error lists the known names and the nearest."""
        try:
            return self._entries[name]
        except KeyError:
            raise PipelineError(unknown_option_message("pipeline", name, self.names())) from None

    def create(self, name: str, params: Mapping[str, ParamValue] | None = None) -> Pipeline:
        """Build the pipeline ``name`` with rule parameters ``params``."""
        return self.entry(name).factory(dict(params or {}))


def unknown_option_message(what: str, value: str, known: Sequence[str]) -> str:
    """Say that ``value`` is not one of ``known``, suggesting the nearest."""
    close = difflib.get_close_matches(value, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown {what} {value!r}; known: {', '.join(known) or '(none)'}.{hint}"


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: Path, expected_sha256: str) -> None:
    """Refuse weights whose SHA-256 differs from the pinned one.

    Raises
    ------
    WeightsError
        If the file is missing or its hash is not ``expected_sha256``.
    """
    if not path.is_file():
        raise WeightsError(f"Weights file {str(path)!r} does not exist.")
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise WeightsError(
            f"Weights file {str(path)!r} has SHA-256 {actual}, "
            f"expected {expected_sha256.lower()}; refusing to load it."
        )
