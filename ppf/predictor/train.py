"""Training and scoring the predictor: SGD on MSE, batch size 1 by default (the paper's finding).

Targets are standardised with the TRAINING rows' mean and std (stored in the network), the order
of rows is reshuffled every epoch by a seeded generator, and the learning rate follows a cosine
schedule to zero so that the last epoch — the one kept, nothing is picked on held-out data —
is not the noisiest one. Same data + same seed → the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ppf.errors import PPFError
from ppf.predictor.net import NetConfig, PredictorNet


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80
    batch_size: int = 1
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0


def fit(images: np.ndarray, targets: np.ndarray, net_config: NetConfig, train: TrainConfig,
        on_epoch: Callable[[int, float], None] = lambda epoch, loss: None) -> tuple[PredictorNet, list[float]]:
    """Train a fresh network on images [N, C, L, W] → targets [N]; return it and the loss per epoch.

    Runs on one thread: batch-1 steps of a small CNN gain nothing from more, and float sums split
    over a machine-dependent number of threads would make the same seed give different weights.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(images, targets, net_config, train, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _fit(images, targets, net_config, train, on_epoch):
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    if x.ndim != 4 or len(x) != len(y) or len(y) < 2:
        raise PPFError(f"training needs images [N, C, L, W] and N >= 2 targets; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] != net_config.in_channels:
        raise PPFError(f"images have {x.shape[1]} planes but the network expects {net_config.in_channels}")
    torch.manual_seed(train.seed)
    net = PredictorNet(net_config)
    if net_config.log_target:  # fit log(y + shift); shift > 0 only when some target is <= 0
        low, spread = y.min(), (y.max() - y.min()).clamp_min(1e-6)
        shift = (spread * 0.01 - low).clamp_min(0.0) if low <= 0 else torch.zeros(())
        net.target_shift.copy_(shift)
        y = (y + shift).log()
    mean, std = y.mean(), y.std().clamp_min(1e-8)
    net.target_mean.copy_(mean)
    net.target_std.copy_(std)
    z = (y - mean) / std
    opt = torch.optim.SGD(net.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    steps_per_epoch = math.ceil(len(x) / train.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=train.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(train.seed)
    loss_fn = nn.MSELoss()
    history = []
    net.train()
    for epoch in range(train.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), train.batch_size):
            idx = order[start:start + train.batch_size]
            opt.zero_grad()
            loss = loss_fn(net.raw(x[idx]), z[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
        if not math.isfinite(history[-1]):
            raise PPFError(f"training diverged at epoch {epoch + 1} (loss {history[-1]}); lower predictor.lr")
        on_epoch(epoch + 1, history[-1])
    net.eval()
    return net, history


@torch.no_grad()
def predict(net: PredictorNet, images: np.ndarray, batch: int = 256) -> np.ndarray:
    x = torch.as_tensor(images, dtype=torch.float32)
    return np.concatenate([net(x[i:i + batch]).numpy() for i in range(0, len(x), batch)]).astype(float)


def scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Held-out accuracy: MAE, RMSE, max error, R², Spearman and Kendall rank correlations."""
    from scipy.stats import kendalltau, spearmanr

    true, pred = np.asarray(true, float), np.asarray(pred, float)
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    ranked = len(true) > 2 and np.ptp(true) > 0 and np.ptp(pred) > 0  # else rank correlation is undefined
    return {
        "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
        "max_error": float(np.abs(err).max()),
        "r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "spearman": float(spearmanr(true, pred).statistic) if ranked else float("nan"),
        "kendall": float(kendalltau(true, pred).statistic) if ranked else float("nan"),
    }


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Mean seconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat
