"""Warm-up + cosine learning rate."""

import math

import pytest
import torch

from nanogpt_lib.schedule import CosineSchedule, ScheduleError, set_lr


def test_warmup_then_cosine_down_to_the_floor():
    s = CosineSchedule(max_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert [s(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])  # 0-based steps, never 0
    assert s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)  # peak at the end of warm-up
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert s(109) == pytest.approx(0.1, abs=1e-3) and s(500) == 0.1
    decay = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_no_warmup_starts_at_the_peak():
    s = CosineSchedule(max_lr=3e-4, total_steps=4)
    assert s(0) == 3e-4 and s(2) == pytest.approx(3e-4 * (1 + math.cos(math.pi / 2)) / 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_lr": 0.0}, r"max_lr=0.0 is not allowed"),
    ({"min_lr": 2.0}, r"min_lr=2.0 is not allowed: it must be in \[0, max_lr=1.0\]"),
    ({"total_steps": 0}, r"total_steps=0 is not allowed"),
    ({"warmup_steps": 20}, r"warmup_steps=20 is not allowed: .*total_steps=10"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        CosineSchedule(**{"max_lr": 1.0, "total_steps": 10, **kwargs})


def test_set_lr_sets_every_group():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 5.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
