"""Small experiments the notebooks run: the same data and training recipe, several models."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import GPTConfig
from .corpus_train import CorpusConfig, train_corpus
from .distributed import DistContext
from .evaluation import evaluate
from .model import GPT
from .tokens import TokenData
from .training import History, TrainConfig, fit


@dataclass(frozen=True)
class SweepResult:
    name: str
    config: GPTConfig
    params: int
    seconds: float  # wall time of training alone (this machine; varies from run to run)
    final_loss: float  # eval-mode loss on the text after training
    train_loss: list[float]  # per epoch, dropout on


def _seeded_models(configs: Mapping[str, GPTConfig], seed: int, device: torch.device, desc: str,
                   progress: bool) -> Iterator[tuple[str, GPTConfig, GPT]]:
    """(name, config, model) for each config, every model built right after torch.manual_seed(seed)."""
    if not configs:
        raise ValueError("configs is empty; give at least one {name: GPTConfig}")
    for name, config in tqdm(configs.items(), desc=desc, disable=not progress):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"configs[{name!r}] is a {type(config).__name__}, not a GPTConfig")
        torch.manual_seed(seed)
        yield name, config, GPT(config).to(device)


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
    results = []
    for name, config, model in _seeded_models(configs, train_config.seed, x.device, "configs", progress):
        start = time.perf_counter()
        history = fit(model, (x, y), train_config, progress=False)
        seconds = time.perf_counter() - start
        results.append(SweepResult(
            name=name, config=config, params=model.num_params(), seconds=seconds,
            final_loss=evaluate(model, x, y).loss, train_loss=history.loss,
        ))
    return results


@dataclass
class CorpusResult:
    name: str
    model: GPT
    params: int  # total
    active_params: int  # used per token (= params for a dense model)
    history: History  # steps, train losses, evals (train / val), MoE routing records
    seconds: float  # training steps alone (this machine; varies from run to run)

    @property
    def final_val_loss(self) -> float:
        return self.history.evals[-1]["val_loss"]


def compare_on_corpus(
    configs: Mapping[str, GPTConfig],
    data: TokenData,
    train_config: TrainConfig,
    corpus_config: CorpusConfig,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> list[CorpusResult]:
    """Train each named config on the same windows of `data` with the same recipe and seed.

    Every model starts from `torch.manual_seed(train_config.seed)`; the batches are a function of
    (seed, step), so all models see exactly the same tokens in the same order.
    """
    results = []
    for name, _, model in _seeded_models(configs, train_config.seed, torch.device(device), "models", progress):
        run = train_corpus(model, data, train_config, corpus_config, DistContext(device=torch.device(device)),
                           progress=False)
        results.append(CorpusResult(name=name, model=model, params=model.num_params(),
                                    active_params=model.num_active_params(), history=run.history,
                                    seconds=run.train_seconds))
    return results
