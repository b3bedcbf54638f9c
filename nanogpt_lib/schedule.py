"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

    step < warmup:           lr = max_lr * (step + 1) / warmup
    warmup <= step < total:  lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2
    step >= total:           lr = min_lr

with progress = (step - warmup) / (total - warmup) going from 0 to 1. Steps count from 0, so
the first step already uses a small positive rate. A pure function of the step: resuming a run
needs nothing but the step number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ScheduleError(ValueError):
    """A schedule whose numbers cannot work together."""


@dataclass(frozen=True)
class CosineSchedule:
    max_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if not _finite(self.max_lr) or self.max_lr <= 0:
            raise ScheduleError(f"max_lr={self.max_lr!r} is not allowed: it must be a finite number > 0")
        if not _finite(self.min_lr) or not 0 <= self.min_lr <= self.max_lr:
            raise ScheduleError(f"min_lr={self.min_lr!r} is not allowed: it must be in [0, max_lr={self.max_lr}]")
        if not _integer(self.total_steps) or self.total_steps < 1:
            raise ScheduleError(f"total_steps={self.total_steps!r} is not allowed: it must be an integer >= 1")
        if not _integer(self.warmup_steps) or not 0 <= self.warmup_steps <= self.total_steps:
            raise ScheduleError(
                f"warmup_steps={self.warmup_steps!r} is not allowed: it must be an integer in "
                f"[0, total_steps={self.total_steps}]"
            )

    def __call__(self, step: int) -> float:
        """The learning rate of the 0-based optimisation `step`."""
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.max_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Give every parameter group of `optimizer` the learning rate `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
