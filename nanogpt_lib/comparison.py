"""Comparing models fairly: one fixed validation set for every model and seed, and paired statistics.

A comparison of two training recipes is noisy in two ways: the validation sample (which windows are
scored) and the seed (initial weights, batch order). The first is removed by scoring every model on
the same windows; `fixed_windows` takes them at fixed positions of the validation split, with no
random draw. The second is measured by repeating the comparison over seeds with everything else equal
and looking at the *paired* difference per seed: for models A and B and seeds s = 1..n,

    d_s = L_B(s) - L_A(s),   mean d = (1/n) sum_s d_s,   SE = std(d) / sqrt(n)

(std with n - 1), and how many of the n seeds B wins (d_s < 0). Pairing removes what the two models
of a seed share (the batches, most of the initial weights), so SE(d) is usually far below the spread
of either model's loss over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .evaluation import eval_mode


def fixed_windows(tokens: np.ndarray, block_size: int, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of `tokens`: inputs (W, T) and targets (W, T), the targets shifted by one.

    Window w covers tokens [w*T, w*T + T] (T + 1 tokens, the last one only as a target), so all
    (len - 1) // T windows together score every token of the split once. With `count`, `count` of
    them evenly spaced over the split (no random draw: the same windows on every machine).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} is not allowed: it must be an integer >= 1")
    total = (len(tokens) - 1) // block_size
    if total < 1:
        raise ValueError(f"{len(tokens)} tokens hold no window of block_size={block_size} (+1 target)")
    if count is None:
        chosen = np.arange(total)
    elif isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total:
        raise ValueError(f"count={count!r} is not allowed: it must be an integer in [1, {total}] "
                         f"(the split holds {total} windows)")
    else:
        chosen = np.linspace(0, total - 1, count).round().astype(np.int64)
    starts = chosen * block_size  # (W,)
    rows = np.stack([np.asarray(tokens[s : s + block_size + 1], dtype=np.int64) for s in starts])  # (W, T+1)
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def windows_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats per token) of `model` in eval mode over all windows, `batch_size` at a time.

    Every window has the same number of targets, so the mean of the batch means (weighted by rows)
    is the mean over tokens.
    """
    device = next(model.parameters()).device
    total = 0.0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            total += model(xb, targets=yb)[1].item() * len(xb)
    return total / len(x)


@dataclass(frozen=True)
class Summary:
    """Mean and standard error of one model's values over seeds."""

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.se:.4f}"


@dataclass(frozen=True)
class PairedDifference:
    """Model minus baseline, seed by seed: mean, standard error, and seeds the model wins (lower)."""

    mean: float
    se: float
    wins: int
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.4f} ± {self.se:.4f} (wins {self.wins}/{self.n})"


def summarise(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return Summary(statistics.fmean(values), se, n)


def paired_difference(model: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference:
    """Over the seeds both have, d_s = model[s] - baseline[s]: mean, SE, and wins (d_s < 0)."""
    seeds = sorted(set(model) & set(baseline))
    if not seeds:
        raise ValueError(f"no common seeds: model has {sorted(model)}, baseline has {sorted(baseline)}")
    d = [model[s] - baseline[s] for s in seeds]
    spread = summarise(d)
    return PairedDifference(spread.mean, spread.se, sum(v < 0 for v in d), spread.n)
