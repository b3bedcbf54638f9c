"""Small experiments the notebooks run: the same data and training recipe, several models."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

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


def modern_moe_variants(part2: GPTConfig, bias_update_rate: float = 0.01) -> dict[str, GPTConfig]:
    """Notebook 08's four variants of a Part-2 MoE config (E experts of width H, top-k), at about the same
    active parameters: Part 2 itself; SwiGLU experts of width 2H // 3 (the same parameters per expert);
    fine-grained + shared (each SwiGLU expert split in 4, 2 of the 4E quarters shared, the router picking
    4k - 2 of the others); and the latter with DeepSeek-V3's sigmoid router and balancing bias instead of
    the auxiliary loss (and without the z-loss, which a sigmoid router does not use)."""
    if part2.n_expert == 0 or part2.expert_type != "gelu" or part2.n_shared_expert != 0:
        raise ValueError(f"part2 must be a Part-2 MoE config (n_expert > 0, GELU experts, no shared ones), got "
                         f"n_expert={part2.n_expert}, expert_type={part2.expert_type!r}, "
                         f"n_shared_expert={part2.n_shared_expert}")
    swiglu_width = 2 * part2.hidden_size // 3
    swiglu = replace(part2, expert_type="swiglu", expert_hidden=swiglu_width)
    fine_shared = replace(swiglu, n_expert=4 * part2.n_expert - 2, expert_hidden=swiglu_width // 4,
                          top_k=4 * part2.top_k - 2, n_shared_expert=2)
    loss_free = replace(fine_shared, router_type="sigmoid", bias_update_rate=bias_update_rate, aux_loss_weight=0.0,
                        z_loss_weight=0.0)
    return {"Part 2 MoE": part2, "SwiGLU experts": swiglu, "fine-grained + shared": fine_shared,
            "+ loss-free balancing": loss_free}


def part1_size(vocab_size: int) -> GPTConfig:
    """Part 1's model, dense, dropout 0 (the Part 2 study's 600 steps see each training token at most once)."""
    return GPTConfig(block_size=100, vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def study_moe(base: GPTConfig, n_expert: int, top_k: int, width: int, **changes) -> GPTConfig:
    """`base` with every MLP an MoE of `n_expert` GELU experts of hidden width `width`, top-k, no capacity limit
    (dropless), load-balancing loss 0.01 and z-loss 0.001, unless `changes` say otherwise."""
    settings = dict(n_expert=n_expert, top_k=top_k, expert_hidden=width, capacity_factor=None,
                    eval_capacity_factor=None, aux_loss_weight=0.01, z_loss_weight=0.001)
    return replace(base, **{**settings, **changes})


def part2_study_models(vocab_size: int) -> dict[str, GPTConfig]:
    """Every model of the Part 2 study (`python -m studies.moe_vs_dense`), by key. The dense MLP is
    4 x 128 = 512 wide; every MoE of the main comparison is 512 wide per token (expert width x k)."""
    base = part1_size(vocab_size)
    found: dict[str, GPTConfig] = {
        "dense": base,
        # the upper reference: a dense MLP as wide as all 8 half-width experts together, written as one
        # expert of width 2048 that every token uses (no router, weight 1: a plain GELU MLP)
        "dense-4x-wide": study_moe(base, 1, 1, 2048, aux_loss_weight=0.0, z_loss_weight=0.0),
        "moe-8x2": study_moe(base, 8, 2, 256),  # Part 2's MoE: 8 experts of half width, top-2
        "switch-8x1": study_moe(base, 8, 1, 512),  # Switch: top-1 of full width (weight = its probability)
        "fine-16x4": study_moe(base, 16, 4, 128),  # fine-grained: each expert split in two, k doubled
        "moe-8x4": study_moe(base, 8, 4, 128),  # choosing k: top-4 of quarter width
    }
    for aux in (0.0, 0.001, 0.1):  # load x balance (0.01 is moe-8x2 itself)
        found[f"moe-8x2-aux{aux:g}"] = study_moe(base, 8, 2, 256, aux_loss_weight=aux)
    modern = modern_moe_variants(found["moe-8x2"])  # Part 3's variants of Part 2's MoE (notebook 08)
    found["swiglu-8x2"] = modern["SwiGLU experts"]
    found["fine-shared-30x6"] = modern["fine-grained + shared"]
    found["fine-shared-lossfree"] = modern["+ loss-free balancing"]
    for n_expert in CAPACITY_EXPERTS:  # capacity x experts, top-2 of half width (moe-8x2 is 8, dropless)
        for factor in CAPACITY_FACTORS:
            found.setdefault(capacity_key(n_expert, factor), study_moe(base, n_expert, 2, 256, capacity_factor=factor))
    return found


CAPACITY_EXPERTS = (4, 8, 16)  # the capacity grid's numbers of experts (top-2 of half width)
CAPACITY_FACTORS = (1.0, 1.25, 2.0, None)  # its capacity factors in training (None: dropless)


def capacity_key(n_expert: int, factor: float | None) -> str:
    """The study's key of the top-2 half-width MoE with `n_expert` experts and training capacity `factor`:
    'moe-8x2-cf1.25', or 'moe-8x2' when dropless (factor None)."""
    return f"moe-{n_expert}x2" + ("" if factor is None else f"-cf{factor:g}")
