"""Small experiments the notebooks run: the same text and training recipe, several models."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import GPTConfig
from .evaluation import evaluate
from .model import GPT
from .training import TrainConfig, fit


@dataclass(frozen=True)
class SweepResult:
    name: str
    config: GPTConfig
    params: int
    seconds: float  # wall time of training alone (this machine; varies from run to run)
    final_loss: float  # eval-mode loss on the text after training
    train_loss: list[float]  # per epoch, dropout on


def capacity_sweep(
    configs: Mapping[str, GPTConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    train_config: TrainConfig,
    progress: bool = True,
) -> list[SweepResult]:
    """Train each named config from the same seed on the same batch (x, y), with the same recipe.

    Every model starts from `torch.manual_seed(train_config.seed)`, so a result does not depend on
    which configs ran before it.
    """
    if not configs:
        raise ValueError("configs is empty; give at least one {name: GPTConfig}")
    results = []
    for name, config in tqdm(configs.items(), desc="configs", disable=not progress):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"configs[{name!r}] is a {type(config).__name__}, not a GPTConfig")
        torch.manual_seed(train_config.seed)
        model = GPT(config).to(x.device)
        start = time.perf_counter()
        history = fit(model, (x, y), train_config, progress=False)
        seconds = time.perf_counter() - start
        results.append(SweepResult(
            name=name, config=config, params=model.num_params(), seconds=seconds,
            final_loss=evaluate(model, x, y).loss, train_loss=history.loss,
        ))
    return results
