"""make bench: receive throughput against dcmtk and Orthanc, end-to-end latency, model speed.

Sends the same CT series (default 300 slices of 512x512) with dcmtk's storescu,
one association each time, to (a) dcmtk storescp, (b) Orthanc, (c) radnode's
pynetdicom receive path keeping nothing (deploy/bare_scp.py: the most any
pynetdicom receiver reaches here), (d) radnode, one after the other, for
several rounds, and prints images/s (median over the rounds) and radnode's
ratios to the peers measured in the same run. Then
it measures end-to-end latency on one series: last input instance
acknowledged -> last output stored in Orthanc, with the quiet period stated.
Finally the pipelines' own model timings. Results go to bench-out/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.peers import (
    LOOPBACK,
    Process,
    free_port,
    run_tool,
    spawn,
    start_node,
    start_orthanc,
    start_storescp,
    wait_for_port,
    wait_until,
    write_ct_node_settings,
)
from node.samples import CT_512, make_series, write_series


def send(port: int, folder: Path, aec: str) -> float:
    """Seconds storescu takes to send every file in ``folder`` over one association."""
    started = time.perf_counter()
    result = run_tool(["storescu", "-aec", aec, "+sd", "+r", LOOPBACK, str(port), str(folder)])
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed: {result.stderr[-500:]}")
    return elapsed


def start_bare_scp(workdir: Path) -> Process:
    """Start ``deploy/bare_scp.py``: pynetdicom with radnode's tuning, keeping nothing."""
    port = free_port()
    log = workdir / "bare-scp.log"
    script = Path(__file__).resolve().with_name("bare_scp.py")
    proc = spawn([sys.executable, str(script), str(port)], log)
    wait_for_port(port, proc)
    return Process(proc=proc, port=port, log=log)


def throughput(out: Path, series_folders: list[Path], rounds: int, slices: int) -> dict[str, Any]:
    """Images/s of storescp, Orthanc, bare pynetdicom and radnode on the same files, interleaved."""
    results: dict[str, list[float]] = {
        "storescp": [],
        "orthanc": [],
        "pynetdicom": [],
        "radnode": [],
    }
    for r in range(rounds):
        folder = series_folders[r]
        peers: list[tuple[str, Callable[[Path], Process], str]] = [
            ("storescp", start_storescp, "STORESCP"),
            ("orthanc", start_orthanc, "ORTHANC"),
            ("pynetdicom", start_bare_scp, "BARESCP"),
        ]
        for name, start, aec in peers:
            peer = start(out / f"{name}-{r}")
            try:
                results[name].append(slices / send(peer.port, folder, aec))
            finally:
                peer.stop()
        # radnode: a long quiet period so no processing overlaps the receive,
        # and no pipeline built ahead of it either.
        pacs = start_orthanc(out / f"pacs-{r}")
        port, http_port = free_port(), free_port()
        workdir = out / f"radnode-{r}"
        workdir.mkdir(parents=True)
        node = start_node(
            write_ct_node_settings(workdir, port, http_port, pacs, 3600, warm_up=False),
            workdir / "node.log",
            port,
            http_port,
        )
        try:
            results["radnode"].append(slices / send(port, folder, "RADNODE"))
        finally:
            node.stop()
            pacs.stop()
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in results.items()),
            flush=True,
        )
    median = {k: statistics.median(v) for k, v in results.items()}

    # Each round's peers ran minutes apart from radnode at most, while the
    # machine's speed drifts over a run: ratios are taken within a round.
    def per_round(receiver: str, *peers: str) -> dict[str, list[float]]:
        return {
            peer: [a / b for a, b in zip(results[receiver], results[peer], strict=True)]
            for peer in peers
        }

    vs = per_round("radnode", "orthanc", "storescp", "pynetdicom")
    # What any pynetdicom receiver could reach at best, against the peers.
    bare = per_round("pynetdicom", "orthanc", "storescp")
    return {
        "images_per_second": median,
        "rounds": results,
        "ratios_per_round": vs,
        "bare_pynetdicom_ratios_per_round": bare,
        "radnode_vs_orthanc": statistics.median(vs["orthanc"]),
        "radnode_vs_storescp": statistics.median(vs["storescp"]),
        "radnode_vs_bare_pynetdicom": statistics.median(vs["pynetdicom"]),
        "bare_pynetdicom_vs_orthanc": statistics.median(bare["orthanc"]),
        "bare_pynetdicom_vs_storescp": statistics.median(bare["storescp"]),
    }


def latency(out: Path, folder: Path, slices: int, quiet: float) -> dict[str, float]:
    """Last input acknowledged -> last output stored in Orthanc, for one series."""
    pacs = start_orthanc(out / "latency-pacs")
    port, http_port = free_port(), free_port()
    workdir = out / "latency-node"
    workdir.mkdir(parents=True)
    node = start_node(
        write_ct_node_settings(workdir, port, http_port, pacs, quiet),
        workdir / "node.log",
        port,
        http_port,
    )
    try:
        send(port, folder, "RADNODE")
        acknowledged = time.perf_counter()

        def stored() -> bool:
            return any(
                str(s["MainDicomTags"].get("SeriesDescription", "")).startswith("AI ENHANCED")
                and len(s["Instances"]) == slices
                for study in pacs.rest("/studies")
                for s in pacs.rest(f"/studies/{study}/series?expand")
            )

        wait_until(stored, 3600, "all outputs in Orthanc", interval=0.2)
        total = time.perf_counter() - acknowledged
    finally:
        node.stop()
        pacs.stop()
    return {
        "quiet_seconds": quiet,
        "end_to_end_seconds": total,
        "after_quiet_seconds": total - quiet,
        "per_slice_ms_after_quiet": 1000 * (total - quiet) / slices,
    }


#: Each pipeline's benchmark, run in a process of its own: threads an earlier
#: benchmark's runtimes leave behind (OpenVINO's, torch's) would otherwise
#: share the two cores with the next one (measured: mr-accel's pipeline
#: 50 ms per slice after ct-denoise's benchmark in the same process, 42 ms
#: alone).
_MODEL_BENCHMARKS = {
    "ct-denoise": (
        "from pipelines.ct_denoise.bench import benchmark, describe;"
        " result = {'backend': describe(), **benchmark()}"
    ),
    "mr-accel": "from pipelines.mr_accel.bench import benchmark; result = benchmark()",
}


def model_speed() -> dict[str, Any]:
    """The pipelines' own timings (model alone and whole pipeline per slice)."""
    timings = {}
    for name, code in _MODEL_BENCHMARKS.items():
        done = subprocess.run(
            [sys.executable, "-c", f"import json; {code}; print(json.dumps(result))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} benchmark failed: {done.stderr[-2000:]}")
        timings[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet_seconds for latency")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"making {args.rounds + 1} series of {args.slices} CT slices (512x512) ...", flush=True)
    folders = []
    for r in range(args.rounds + 1):
        folder = out / f"input-{r}"
        write_series(make_series(CT_512, slices=args.slices), folder)
        folders.append(folder)

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "slices": args.slices,
        "receive": throughput(out, folders[:-1], args.rounds, args.slices),
        "latency": latency(out, folders[-1], args.slices, args.quiet),
    }
    if not args.skip_models:
        report["models"] = model_speed()
    recv = report["receive"]
    ips = recv["images_per_second"]
    print()
    print(
        f"receive, {args.slices} CT slices 512x512, storescu, one association"
        f" (median of {args.rounds}):"
    )
    print(f"  dcmtk storescp  {ips['storescp']:7.1f} img/s")
    print(f"  Orthanc         {ips['orthanc']:7.1f} img/s")
    print(f"  pynetdicom      {ips['pynetdicom']:7.1f} img/s  (radnode's receive, keeping nothing)")
    print(f"  radnode         {ips['radnode']:7.1f} img/s  (durable write + index + audit)")
    rounds = recv["ratios_per_round"]
    bare = recv["bare_pynetdicom_ratios_per_round"]
    for peer, name, target in (("orthanc", "Orthanc", 1.5), ("storescp", "storescp", 0.5)):
        each = ", ".join(f"{r:.2f}" for r in rounds[peer])
        print(
            f"  radnode / {name:9s}= {recv[f'radnode_vs_{peer}']:.2f}  (target >= {target};"
            f" median of the rounds' ratios {each})"
        )
        each = ", ".join(f"{r:.2f}" for r in bare[peer])
        print(
            f"    bare pynetdicom / {name:9s}= {recv[f'bare_pynetdicom_vs_{peer}']:.2f}"
            f"  (the most a pynetdicom receiver reaches; rounds {each})"
        )
    print(f"  radnode / bare pynetdicom = {recv['radnode_vs_bare_pynetdicom']:.2f}")
    lat = report["latency"]
    print(
        f"end-to-end latency (last input acknowledged -> last output in Orthanc): "
        f"{lat['end_to_end_seconds']:.1f} s with quiet_seconds = {lat['quiet_seconds']:g}"
        f" ({lat['per_slice_ms_after_quiet']:.0f} ms per slice after the quiet period)"
    )
    for name, timings in report.get("models", {}).items():
        print(f"{name}: " + ", ".join(f"{k} = {v}" for k, v in timings.items()))
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nfull results: {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
