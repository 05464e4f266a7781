"""Training of the mr-accel network on simulated fast acquisitions (``radnode train mr-accel``)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import sha256_file
from pipelines.mr_accel.config import BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256, MODEL_VERSION
from pipelines.mr_accel.dataset import SIMULATION_VERSION, PairSpec, cached_patches

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of ``radnode train mr-accel``."""
    p = argparse.ArgumentParser(prog="radnode train mr-accel", description=__doc__)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("var/train/mr_accel.pt"),
        help="weights file to write (never the bundled, hash-pinned one)",
    )
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    p.add_argument("--batch", type=int, default=12, help="patches per step")
    p.add_argument("--patch", type=int, default=128, help="cached patch side in pixels")
    p.add_argument("--crop", type=int, default=96, help="random crop of a patch per step")
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="wall-clock budget; the learning-rate schedule follows whichever of steps "
        "and time runs out first (0: steps only, fully deterministic)",
    )
    p.add_argument("--images", type=int, default=600, help="simulated full images")
    p.add_argument("--per-image", type=int, default=8, help="patches per image")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=20261121, help="seed of everything")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--init", type=Path, help="start from these weights (fine-tuning)")
    p.add_argument(
        "--init-sha256", help="pinned SHA-256 of --init (needed unless it is the bundled file)"
    )
    p.add_argument("--cache-dir", type=Path, default=Path("var/cache/mr_accel"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--smoke", action="store_true", help="tiny run for tests: few small images, few steps"
    )
    args = p.parse_args(list(argv))
    if args.out.resolve() == BUNDLED_WEIGHTS or (
        args.init is not None and args.out.resolve() == args.init.resolve()
    ):
        p.error(f"--out {args.out} would overwrite pinned weights; write elsewhere")
    if args.init is None and args.init_sha256 is not None:
        p.error("--init-sha256 is the hash of --init weights; give --init too")
    if args.init is not None and args.init_sha256 is None:
        if args.init.resolve() != BUNDLED_WEIGHTS:
            p.error(f"--init {args.init} needs --init-sha256 (the pinned hash of those weights)")
        args.init_sha256 = BUNDLED_WEIGHTS_SHA256
    if args.smoke:
        args.steps, args.batch, args.patch, args.crop = 3, 2, 64, 48
        args.images, args.per_image = 2, 2
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train and write the weights; returns the facts written beside them."""
    import torch

    from pipelines.mr_accel.network import (
        ARCHITECTURE,
        build_network,
        load_network,
        save_checkpoint,
    )

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed + 1)

    shape = (96, 112) if args.smoke else None
    spec = PairSpec(args.seed, args.images, args.per_image, args.patch, shape)
    started = time.perf_counter()
    xs, ys = cached_patches(spec, None if args.smoke else args.cache_dir, not args.no_progress)
    sim_s = time.perf_counter() - started
    logger.info("training on %d patches of %d px", len(xs), args.patch)

    net = build_network()
    if args.init is not None:
        init = load_network(args.init, args.init_sha256)
        net.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = range(args.steps)
    if not args.no_progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="training mr-accel", unit="step")
    net.train()
    losses: list[float] = []
    budget = 60.0 * args.minutes
    t0 = time.perf_counter()
    done = 0
    for step in steps:
        progress = step / args.steps
        if budget > 0:
            progress = max(progress, (time.perf_counter() - t0) / budget)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = _learning_rate(progress, args.lr)
        idx = rng.integers(0, len(xs), size=args.batch)
        crop = min(args.crop, xs.shape[-1])
        r, c = (int(v) for v in rng.integers(0, xs.shape[-1] - crop + 1, size=2))
        x = torch.from_numpy(xs[idx, r : r + crop, c : c + crop])[:, None]
        y = torch.from_numpy(ys[idx, r : r + crop, c : c + crop])[:, None]
        # Flips and transposes: the phase-encode direction and anatomy orientation vary.
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        if rng.random() < 0.5:
            x, y = x.transpose(-1, -2), y.transpose(-1, -2)
        # L1 keeps edges sharper than L2 for the same PSNR.
        loss = torch.nn.functional.l1_loss(net(x.contiguous()), y.contiguous())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        done += 1
        losses.append(loss.item())
        if hasattr(steps, "set_postfix") and len(losses) % 20 == 0:
            steps.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")
    train_s = time.perf_counter() - started - sim_s

    meta: dict[str, Any] = {
        "model_version": MODEL_VERSION,
        "architecture": ARCHITECTURE,
        "simulation_version": SIMULATION_VERSION,
        "seed": args.seed,
        "steps": done,
        "steps_planned": args.steps,
        "minutes_budget": args.minutes,
        "crop": args.crop,
        "batch": args.batch,
        "patch": args.patch,
        "images": args.images,
        "patches": len(xs),
        "lr": args.lr,
        "init": None if args.init is None else args.init.name,
        "init_sha256": args.init_sha256,
        "final_l1": float(np.mean(losses[-100:])) if losses else float("nan"),
        "simulation_seconds": round(sim_s, 1),
        "training_seconds": round(train_s, 1),
        "threads": args.threads,
        "smoke": bool(args.smoke),
    }
    net.eval()
    save_checkpoint(net, args.out, meta)
    meta["sha256"] = sha256_file(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _learning_rate(progress: float, peak: float) -> float:
    """Short linear warm-up, then cosine decay to 1 % of ``peak``."""
    warm = 0.03
    if progress < warm:
        return peak * (0.1 + 0.9 * progress / warm)
    cos = 0.5 * (1.0 + np.cos(np.pi * (progress - warm) / (1.0 - warm)))
    return float(peak * (0.01 + 0.99 * cos))


def main(argv: Sequence[str]) -> int:
    """Entry point of ``radnode train mr-accel``; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    meta = train(args)
    print(f"wrote {args.out} sha256={meta['sha256']} final L1={meta['final_l1']:.4f}")
    return 0
