"""Training of the ct-denoise network on simulated dose reduction (``radnode train ct-denoise``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipelines.base import sha256_file

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "ct_denoise_rescnn_v1.pt"
#: Share of training samples whose input is the normal-dose image itself
#: (target = input): it teaches the network to leave low-noise slices alone.
IDENTITY_SHARE = 0.15


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in ``train.json``)."""

    steps: int = 3000
    seed: int = 0
    phantoms: int = 200
    doses_per_phantom: int = 2
    size: int = 256
    patch: int = 96
    batch: int = 16
    channels: int = 24
    lr: float = 1e-3
    threads: int = 2
    workers: int = 2
    init: str | None = None


def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, Path, Path | None, bool]:
    """Parse ``radnode train ct-denoise`` arguments."""
    ap = argparse.ArgumentParser(
        prog="radnode train ct-denoise",
        description="Train the low-dose CT network on simulated normal/low-dose pairs.",
    )
    ap.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimizer steps")
    ap.add_argument("--out", type=Path, default=Path("var/train/ct-denoise"), help="output dir")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of everything")
    ap.add_argument("--phantoms", type=int, default=TrainConfig.phantoms)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--patch", type=int, default=TrainConfig.patch)
    ap.add_argument("--channels", type=int, default=TrainConfig.channels)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads")
    ap.add_argument("--workers", type=int, default=TrainConfig.workers, help="simulation procs")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("var/cache/ct-denoise"),
        help="simulated-data cache ('none' disables)",
    )
    ap.add_argument(
        "--init", type=Path, default=None, help="start from these weights (fine-tuning)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests (seconds)")
    ns = ap.parse_args(list(argv))
    cfg = TrainConfig(
        steps=ns.steps,
        seed=ns.seed,
        phantoms=ns.phantoms,
        batch=ns.batch,
        patch=ns.patch,
        channels=ns.channels,
        lr=ns.lr,
        threads=ns.threads,
        workers=ns.workers,
        init=str(ns.init) if ns.init is not None else None,
    )
    if ns.smoke:
        # A tiny run of the same command: seed, learning rate and --init are
        # kept (with --init, so is the network width the weights were made for).
        cfg = replace(
            cfg,
            steps=min(ns.steps, 3),
            phantoms=2,
            doses_per_phantom=1,
            size=64,
            patch=32,
            batch=2,
            channels=cfg.channels if cfg.init else 8,
            threads=1,
            workers=1,
        )
    cache = None if str(ns.cache) == "none" else ns.cache
    return cfg, ns.out, cache, bool(ns.smoke)


def _augment(rng: np.random.Generator, *images: np.ndarray) -> list[np.ndarray]:
    # CT noise has no preferred orientation in a parallel-beam reconstruction,
    # so the eight flips/rotations are free extra data.
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for im in images:
        x = np.rot90(im, k)
        out.append(np.ascontiguousarray(x[:, ::-1] if flip else x))
    return out


def _batches(
    rng: np.random.Generator,
    low: np.ndarray,
    normal: np.ndarray,
    sigma_low: np.ndarray,
    sigma_normal: np.ndarray,
    cfg: TrainConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, h, w = low.shape
    xs = np.empty((cfg.batch, cfg.patch, cfg.patch), np.float32)
    ys = np.empty_like(xs)
    ss = np.empty((cfg.batch,), np.float32)
    for b in range(cfg.batch):
        i = int(rng.integers(n))
        # Patches are drawn where there is anatomy (not air), most of the time.
        for _ in range(10):
            r = int(rng.integers(h - cfg.patch + 1))
            c = int(rng.integers(w - cfg.patch + 1))
            if normal[i, r + cfg.patch // 2, c + cfg.patch // 2] > -900.0:
                break
        identity = rng.random() < IDENTITY_SHARE
        src = normal if identity else low
        x = src[i, r : r + cfg.patch, c : c + cfg.patch]
        y = normal[i, r : r + cfg.patch, c : c + cfg.patch]
        x, y = _augment(rng, x, y)
        xs[b], ys[b] = x, y
        ss[b] = sigma_normal[i] if identity else sigma_low[i]
    return xs, ys, ss


def train(cfg: TrainConfig, out: Path, cache: Path | None, quiet: bool = False) -> Path:
    """Simulate (or load) the data, train, and write weights plus ``train.json``.

    Returns
    -------
    pathlib.Path
        The weights file written.
    """
    import torch
    from tqdm import tqdm

    from pipelines.ct_denoise.dataset import SimRecipe, generate
    from pipelines.ct_denoise.network import (
        HU_SCALE,
        RESIDUAL_SCALE,
        SIGMA_SCALE,
        NetworkConfig,
        ResidualDenoiser,
        load_weights,
        save_weights,
    )
    from pipelines.qa import estimate_noise_sd

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()
    recipe = SimRecipe(
        n_phantoms=cfg.phantoms,
        doses_per_phantom=cfg.doses_per_phantom,
        size=cfg.size,
        seed=cfg.seed,
    )
    bar = tqdm(total=cfg.phantoms, desc="simulate", disable=quiet)
    data = generate(recipe, cache, workers=cfg.workers, progress=lambda k: bar.update(k - bar.n))
    bar.close()
    sigma_normal = np.array([estimate_noise_sd(x) for x in data.normal], dtype=np.float32)
    # A fine-tuning run draws a different patch sequence from the same data.
    rng = np.random.default_rng([cfg.seed, 1 if cfg.init is None else 2])
    if cfg.init is not None:
        # Fine-tuning continues from earlier weights, at their width; the
        # record keeps their hash.
        init = load_weights(Path(cfg.init))
        if init.config.channels != cfg.channels:
            logger.info("--init weights have %d channels; --channels ignored", init.config.channels)
            cfg = replace(cfg, channels=init.config.channels)
        net = ResidualDenoiser(init.config)
        net.load_state_dict(init.state_dict())
    else:
        net = ResidualDenoiser(NetworkConfig(channels=cfg.channels))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # Cosine decay to 1 % of the rate: the last steps settle the fine texture.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
    )
    history: list[float] = []
    ema = None
    net.train()
    for step in tqdm(range(cfg.steps), desc="train", disable=quiet):
        xs, ys, ss = _batches(rng, data.low, data.normal, data.sigma_low, sigma_normal, cfg)
        x = torch.from_numpy(xs)[:, None] / HU_SCALE
        target_noise = torch.from_numpy(xs - ys)[:, None] / RESIDUAL_SCALE
        pred = net(x, torch.from_numpy(ss) / SIGMA_SCALE)
        # MSE on the noise in HU: the estimator that maximises PSNR against
        # the normal-dose image (the conditional mean).
        loss = torch.mean((pred - target_noise) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        value = float(loss.item()) * RESIDUAL_SCALE**2
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append(round(ema, 3))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    meta = {"seed": cfg.seed, "steps": cfg.steps, "recipe": recipe.key(), "init": cfg.init}
    save_weights(net.eval(), weights, meta)
    record = {
        "config": cfg.__dict__,
        "recipe": recipe.key(),
        "init_sha256": sha256_file(Path(cfg.init)) if cfg.init else None,
        "pairs": len(data),
        "loss_mse_hu2_ema": history,
        "seconds": round(time.time() - started, 1),
        "weights": weights.name,
        "sha256": sha256_file(weights),
    }
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    return weights


def main(argv: Sequence[str]) -> int:
    """Entry of ``radnode train ct-denoise``; returns an exit code."""
    cfg, out, cache, smoke = parse_args(argv)
    weights = train(cfg, out, cache, quiet=smoke)
    print(f"weights: {weights}\nsha256: {sha256_file(weights)}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
