"""Evaluation reports: Markdown tables and the standard plots (crops, NPS curves, d' bars)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.evaluation.metrics import Window


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats get two decimals."""

    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_crops(
    path: Path,
    images: Mapping[str, npt.NDArray[np.floating]],
    window: Window,
    title: str,
) -> None:
    """Side-by-side crops (same region, same window) of several versions of a slice."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)  # type: ignore[attr-defined]
    for ax, (name, img) in zip(axes[0], images.items(), strict=True):
        ax.imshow(img, cmap="gray", vmin=window.low, vmax=window.high, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} (window {window.label()} HU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)  # type: ignore[attr-defined]


def plot_nps(
    path: Path,
    curves: Mapping[str, tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]],
    title: str,
) -> None:
    """Radial NPS curves, frequency in cycles/mm against HU^2 mm^2."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))  # type: ignore[attr-defined]
    for name, (freq, nps) in curves.items():
        ax.plot(freq, nps, label=name)
    ax.set_xlabel("spatial frequency (cycles/mm)")
    ax.set_ylabel("NPS (HU² mm²)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)  # type: ignore[attr-defined]


def plot_bars(
    path: Path,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str,
) -> None:
    """Grouped bars, e.g. d' per insert for each method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))  # type: ignore[attr-defined]
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)  # type: ignore[attr-defined]
