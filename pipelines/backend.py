"""Inference backends: a pipeline's torch network run by OpenVINO on the CPU, or by torch.

The pipelines load their hash-verified weights into a torch module and hand it
to :func:`load_backend`. On the CPU the module is converted in-process by
OpenVINO (nothing is written to disk or shipped besides the weights) and
compiled at float32 precision with a pinned thread count: OpenVINO's CPU
kernels run these small convolutional networks about twice (ct-denoise) to
three times (mr-accel) as fast as torch eager on two cores. Torch runs the
module on a GPU, when a rule asks for it, and as the fallback when OpenVINO is
not installed, its conversion fails, or its output on a probe input disagrees
with torch's by more than the pipeline's tolerance; the reason is logged.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.base import FloatArray, PipelineError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Backends a rule may ask for; ``auto`` is OpenVINO on the CPU, torch on a GPU.
BACKENDS = ("auto", "openvino", "torch")
#: Compiled models kept per network, one per input shape (full batches, a
#: series' last partial batch, other matrix sizes); the oldest is dropped.
MAX_COMPILED_SHAPES = 4

#: Converted OpenVINO models by the caller's key (network name and weights
#: SHA-256), so that rebuilding a pipeline does not convert its weights again.
_CONVERTED: dict[str, Any] = {}
_CONVERTED_LOCK = threading.Lock()


def import_openvino() -> Any:
    """The ``openvino`` module, imported with its usage telemetry declined.

    Importing OpenVINO's converter starts its usage telemetry, which, unless a
    consent file in the user's home says otherwise, writes a client id and
    usage counts under ``~/intel`` and sends them over the network. A node in
    a hospital network does neither: the consent check answers "declined"
    for this process, as an opt-out file would.

    Raises
    ------
    ImportError
        When OpenVINO is not installed.
    """
    try:
        from openvino_telemetry.utils import opt_in_checker  # type: ignore[import-untyped]
    except ImportError:
        pass  # no telemetry package: nothing is collected
    else:
        declined = opt_in_checker.ConsentCheckResult.DECLINED

        def _declined(self: object, *args: object, **kwargs: object) -> Any:
            return declined

        opt_in_checker.OptInChecker.check = _declined
    import openvino  # type: ignore[import-untyped]

    return openvino


class Network(Protocol):
    """A network taking and returning ``float32`` arrays (NCHW, like the torch module)."""

    #: Backend in words, e.g. ``"openvino 2026.4.1 CPU f32"``.
    name: str
    #: ``"openvino"`` or ``"torch"``.
    kind: str
    #: CPU threads the backend uses.
    threads: int

    def __call__(self, *inputs: FloatArray) -> FloatArray:
        """Run the network on ``inputs`` and return its first output."""
        ...


class TorchNetwork:
    """The torch module itself, on the CPU or a GPU.

    Parameters
    ----------
    module
        The network in eval mode, already on ``device``.
    device
        ``"cpu"`` or ``"cuda"``.
    channels_last
        Feed 4-D inputs in NHWC memory layout (the module must be converted
        to it too): oneDNN's fastest convolutions for some networks.
    """

    kind = "torch"

    def __init__(self, module: torch.nn.Module, device: str, channels_last: bool = False) -> None:
        import torch

        self._module = module
        self._device = device
        self._channels_last = channels_last
        self._torch = torch
        self.threads = torch.get_num_threads()
        layout = ", channels-last" if channels_last else ""
        where = "oneDNN" if device == "cpu" else device
        self.name = f"torch {torch.__version__} eager, {where}{layout}"

    def __call__(self, *inputs: FloatArray) -> FloatArray:
        """Run the module under ``inference_mode``; the output comes back as float32."""
        torch = self._torch
        with torch.inference_mode():
            tensors = [self._tensor(a) for a in inputs]
            out = self._module(*tensors)
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def _tensor(self, array: FloatArray) -> torch.Tensor:
        t = self._torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self._device)
        if self._channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=self._torch.channels_last)
        return t


class OpenVINONetwork:
    """An OpenVINO model compiled for the CPU, one compiled copy per input shape.

    Compiling for a static shape lets the CPU plugin pick its kernels for it
    (faster than the dynamic-shape model) and takes a fraction of a second.

    Parameters
    ----------
    model
        The converted ``openvino.Model`` with dynamic input shapes.
    threads
        ``INFERENCE_NUM_THREADS``.
    """

    kind = "openvino"

    def __init__(self, model: Any, threads: int) -> None:
        ov = import_openvino()

        self._model = model
        self._core = ov.Core()
        self.threads = threads
        self.name = f"openvino {ov.get_version().split('-')[0]} CPU f32, latency hint"
        self._compiled: OrderedDict[tuple[tuple[int, ...], ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        """CPU plugin properties: pinned threads, one stream, float32 arithmetic.

        Float32 is named because on CPUs with bf16 units OpenVINO would
        otherwise run in bf16, about 1.5 HU off for ct-denoise.
        """
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }

    def __call__(self, *inputs: FloatArray) -> FloatArray:
        """Run the model compiled for these input shapes (compiled on first use)."""
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]
        shapes = tuple(a.shape for a in arrays)
        with self._lock:
            request = self._request(shapes)
            # The inputs are read in place (they are not changed while it runs);
            # the outputs come back as copies of OpenVINO's buffers.
            result = request.infer(arrays, share_inputs=True, share_outputs=False)
            return np.asarray(result[0], dtype=np.float32)

    def _request(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        if shapes in self._compiled:
            self._compiled.move_to_end(shapes)
            return self._compiled[shapes]
        model = self._model.clone()
        model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes, strict=True)})
        request = self._core.compile_model(model, "CPU", self.config()).create_infer_request()
        self._compiled[shapes] = request
        if len(self._compiled) > MAX_COMPILED_SHAPES:
            self._compiled.popitem(last=False)
        return request


def resolve_device(device: str, backend: str, what: str) -> str:
    """The torch device for a rule's ``device`` (``auto``, ``cpu``, ``cuda``) and ``backend``.

    ``auto`` is the CPU when the rule asks for OpenVINO (which runs there),
    otherwise a GPU when one is present.

    Raises
    ------
    PipelineError
        When ``cuda`` is asked for and no GPU is present; ``what`` names the pipeline.
    """
    import torch

    if device == "auto":
        if backend == "openvino":
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{what} device 'cuda' was requested but no GPU is available.")
    return device


def resolve_backend(backend: str, device: str) -> str:
    """The backend that runs on ``device`` (``"cpu"`` or ``"cuda"``).

    Raises
    ------
    PipelineError
        For an unknown backend, or OpenVINO asked for on a GPU.
    """
    if backend not in BACKENDS:
        raise PipelineError(f"Unknown backend {backend!r}; known: {', '.join(BACKENDS)}.")
    if device != "cpu":
        if backend == "openvino":
            raise PipelineError(
                f"Backend 'openvino' runs on the CPU; device {device!r} needs backend 'torch'."
            )
        return "torch"
    return "torch" if backend == "torch" else "openvino"


def load_backend(
    module: torch.nn.Module,
    probe: Sequence[FloatArray],
    *,
    key: str,
    tolerance: float,
    backend: str = "auto",
    device: str = "cpu",
    channels_last: bool = False,
) -> Network:
    """Run ``module`` with the fastest backend that agrees with torch.

    Parameters
    ----------
    module
        The network with its verified weights, in eval mode, on ``device``.
    probe
        Example inputs in the network's real range: they fix the inputs'
        ranks for the conversion, and OpenVINO's output on them must be
        within ``tolerance`` (max abs) of torch's.
    key
        Identifies the network and its weights (e.g. name and weights
        SHA-256): the converted model is reused for the same key.
    tolerance
        Largest absolute difference from torch accepted on the probe, in
        the network's output units.
    backend
        ``auto``, ``openvino`` or ``torch`` (see :func:`resolve_backend`).
    device
        ``cpu`` or ``cuda``.
    channels_last
        Passed to :class:`TorchNetwork`.

    Returns
    -------
    Network
        OpenVINO on the CPU unless torch was asked for or OpenVINO failed.
    """
    torch_net = TorchNetwork(module, device, channels_last)
    if resolve_backend(backend, device) == "torch":
        return torch_net
    try:
        ov_net = OpenVINONetwork(_converted(module, probe, key), torch_net.threads)
        diff = float(np.max(np.abs(ov_net(*probe) - torch_net(*probe))))
    except ImportError as exc:
        logger.warning("OpenVINO is not available (%s); %s runs on torch.", exc, key)
        return torch_net
    except Exception as exc:
        logger.warning(
            "OpenVINO could not convert %s (%s); it runs on torch.", key, exc, exc_info=True
        )
        return torch_net
    if not diff <= tolerance:
        logger.warning(
            "OpenVINO's output for %s differs from torch's by %.3g (tolerance %.3g); "
            "it runs on torch.",
            key,
            diff,
            tolerance,
        )
        return torch_net
    logger.info("%s runs on %s with %d threads.", key, ov_net.name, ov_net.threads)
    return ov_net


def _converted(module: torch.nn.Module, probe: Sequence[FloatArray], key: str) -> Any:
    """The module converted to an OpenVINO model with dynamic input shapes, once per key."""
    import torch

    ov = import_openvino()

    with _CONVERTED_LOCK:
        if key not in _CONVERTED:
            example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in probe)
            with warnings.catch_warnings():
                # OpenVINO converts a torch.jit trace, which torch marks as
                # deprecated; should a torch release drop it, the conversion fails
                # and the caller falls back to torch.
                warnings.filterwarnings("ignore", r".*torch\.jit", DeprecationWarning)
                # Traced here without torch's own re-run check (a second forward
                # pass and a comparison, 0.4-1.3 s for the CT network on two
                # cores): the caller compares the converted model with torch anyway.
                module.eval()  # no dropout or batch statistics in the graph
                with torch.no_grad():
                    traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                        module, example, check_trace=False
                    )
                _CONVERTED[key] = ov.convert_model(traced, example_input=example)
        return _CONVERTED[key]
