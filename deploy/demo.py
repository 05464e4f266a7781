"""make demo: a low-dose CT series through a running node into a local Orthanc PACS.

Starts Orthanc and radnode on free loopback ports, makes a 25 % dose CT
series from a real 512x512 slice of pydicom-data (projection-domain noise
insertion), sends it with dcmtk's storescu, waits for the enhanced series to
arrive in Orthanc in the same study, prints where it is, and writes a
before/after picture. Everything lives under ./demo-out and is stopped at
the end (pass --keep to leave Orthanc and the node running).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread

from node.peers import (
    LOOPBACK,
    free_port,
    run_tool,
    start_node,
    start_orthanc,
    wait_until,
    write_ct_node_settings,
)
from node.samples import CT_512, make_series, write_series

WINDOW = (-160.0, 240.0)  # soft-tissue window, HU
SLICES = 8


def hu(ds: Dataset) -> np.ndarray:
    """A slice's pixels in Hounsfield units."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return np.asarray(ds.pixel_array, dtype=np.float32) * slope + intercept


def to_gray(image: np.ndarray) -> np.ndarray:
    """Soft-tissue window to 8-bit grey."""
    low, high = WINDOW
    return (np.clip((image - low) / (high - low), 0, 1) * 255).astype(np.uint8)


#: Soft-tissue noise of the (simulated) normal-dose scan, HU: a clinical level.
FULL_DOSE_SD_HU = 12.0


def low_dose_series(slices: int, dose: float) -> list[Dataset]:
    """A CT series whose slices carry simulated dose reduction (each its own noise).

    Projection-domain noise insertion (the same physics the model was trained
    with), with the incident flux calibrated so that the full-dose scan would
    have ``FULL_DOSE_SD_HU`` of noise at the centre.
    """
    from pipelines.ct_denoise.evaluate import simulate_real_low_dose
    from pipelines.ct_denoise.simulate import ParallelBeamProjector

    series = make_series(CT_512, slices=slices, series_description=f"HEAD {dose:.0%} DOSE")
    projector = ParallelBeamProjector(int(series[0].Rows))
    for i, ds in enumerate(series):
        image = np.maximum(hu(ds), -1024.0)
        noisy, _ = simulate_real_low_dose(
            image, float(ds.PixelSpacing[0]), dose, 100 + i, FULL_DOSE_SD_HU, projector
        )
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        stored = np.rint((noisy - intercept) / slope)
        dtype = ds.pixel_array.dtype
        high = 2 ** int(ds.BitsStored) - 1 if np.issubdtype(dtype, np.unsignedinteger) else None
        info = np.iinfo(dtype)
        ds.PixelData = np.clip(stored, info.min, high or info.max).astype(dtype).tobytes()
    return series


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--dose", type=float, default=0.25)
    parser.add_argument("--keep", action="store_true", help="leave Orthanc and the node running")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    print("starting Orthanc ...", flush=True)
    orthanc = start_orthanc(out / "orthanc")
    node_port, http_port = free_port(), free_port()
    config = write_ct_node_settings(out, node_port, http_port, orthanc, quiet_seconds=2)
    print("starting radnode ...", flush=True)
    node = start_node(config, out / "node.log", node_port, http_port)
    try:
        print(f"simulating a {args.dose:.0%} dose series of {SLICES} slices ...", flush=True)
        series = low_dose_series(SLICES, args.dose)
        files = write_series(series, out / "input")
        study_uid = str(series[0].StudyInstanceUID)
        started = time.monotonic()
        sent = run_tool(
            ["storescu", "-aet", "DEMO-CT", "-aec", "RADNODE", LOOPBACK, str(node_port)]
            + [str(f) for f in files]
        )
        if sent.returncode != 0:
            print(sent.stderr, file=sys.stderr)
            return 1
        print(f"sent {len(files)} slices to radnode on port {node_port}", flush=True)

        def enhanced() -> dict[str, object] | None:
            for s in orthanc.series_of_study(study_uid):
                desc = str(s["MainDicomTags"].get("SeriesDescription", ""))
                if desc.startswith("AI ENHANCED") and len(s["Instances"]) == len(files):
                    return dict(s)
            return None

        found = wait_until(enhanced, 600, "the enhanced series in Orthanc", interval=0.5)
        elapsed = time.monotonic() - started
        instances = sorted(
            (dcmread(orthanc.instance_file(i)) for i in found["Instances"]),
            key=lambda d: int(d.InstanceNumber),
        )
        middle = len(instances) // 2
        after = instances[middle]
        before = next(
            ds
            for ds in series
            if ds.SOPInstanceUID == after.SourceImageSequence[0].ReferencedSOPInstanceUID
        )
        picture = np.concatenate([to_gray(hu(before)), to_gray(hu(after))], axis=1)
        png = out / "before-after.png"
        Image.fromarray(picture).save(png)
        tags = found["MainDicomTags"]
        print()
        print(f"enhanced series in Orthanc after {elapsed:.1f} s:")
        print(f"  study      {study_uid}")
        print(f"  series     {tags['SeriesInstanceUID']}  ({tags.get('SeriesDescription')})")
        print(f"  instances  {len(instances)}  (SOP class {after.SOPClassUID.name})")
        print(f"  derivation {after.DerivationDescription}")
        print(
            f"  Orthanc    http://{LOOPBACK}:{orthanc.http_port}"
            f"/app/explorer.html#series?uuid={found['ID']}"
        )
        print(
            f"  picture    {png}"
            f"  (left: {args.dose:.0%} dose input, right: radnode; window {WINDOW})"
        )
        print(f"  audit      .venv/bin/radnode audit --config {config} --study {study_uid}")
        if args.keep:
            print("\nOrthanc and radnode keep running (--keep); stop them with Ctrl-C.")
            with contextlib.suppress(KeyboardInterrupt):
                node.proc.wait()
        return 0
    finally:
        node.stop()
        orthanc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
