"""What a configuration costs: parameters, FLOPs per token, memory, and measured forward time.

The counts come from the model itself, built on PyTorch's "meta" device (shapes only, no memory,
no arithmetic), so they can never drift from `model.py`. Memory is the fp32 training state:

    weights        4 bytes x N
    gradients      4 bytes x N
    AdamW state    8 bytes x N   (two moving averages per parameter: m and v)

Activations are left out: they depend on the batch size and are freed after each step.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .config import GPTConfig
from .model import GPT

FP32_BYTES = 4


@dataclass(frozen=True)
class ModelCost:
    config: GPTConfig
    params: int  # every parameter, the tied wte / lm_head matrix once
    non_embedding_params: int  # without wte and wpe (the N of scaling laws)
    active_params: int  # what one token uses: in MoE layers only top_k of the experts (= params when dense)
    train_flops_per_token: int  # forward + backward at seq_len = block_size
    forward_flops_per_token: int

    @property
    def weight_bytes(self) -> int:
        return FP32_BYTES * self.params

    @property
    def gradient_bytes(self) -> int:
        return FP32_BYTES * self.params

    @property
    def adamw_bytes(self) -> int:
        return 2 * FP32_BYTES * self.params

    @property
    def training_bytes(self) -> int:
        """Weights + gradients + AdamW state (16 bytes per parameter), activations excluded."""
        return self.weight_bytes + self.gradient_bytes + self.adamw_bytes


def model_cost(config: GPTConfig) -> ModelCost:
    """Parameter, FLOP and memory counts of `config`, without allocating its weights."""
    with torch.device("meta"):
        model = GPT(config)
    return ModelCost(
        config=config,
        params=model.num_params(),
        non_embedding_params=model.num_params(non_embedding=True),
        active_params=model.num_active_params(),
        train_flops_per_token=model.flops_per_token(training=True),
        forward_flops_per_token=model.flops_per_token(training=False),
    )


_GROUPS = (
    ("wte", "wte (tokens, tied with lm_head)"),
    ("wpe", "wpe (positions)"),
    ("attn", "attention (c_attn, c_proj)"),
    ("mlp", "MLP (c_fc, c_proj)"),
)
_NORMS = "LayerNorms (ln_1, ln_2, ln_f)"


def param_breakdown(config: GPTConfig) -> dict[str, int]:
    """Where the parameters live, summed over all blocks (the tied wte / lm_head matrix once)."""
    with torch.device("meta"):
        model = GPT(config)
    groups = dict.fromkeys([label for _, label in _GROUPS] + [_NORMS], 0)
    for name, p in model.named_parameters():  # e.g. transformer.h.0.attn.c_attn.weight
        parts = name.split(".")
        groups[next((label for key, label in _GROUPS if key in parts), _NORMS)] += p.numel()
    return groups


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as memory is sold)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(n: float) -> str:
    """1_330_432 -> '1.33M'; 12_000 -> '12.0k'; 950 -> '950'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}" if n / div < 100 else f"{n / div:.0f}{suffix}"
    return f"{n:.0f}"


def time_forward(model: GPT, batch_size: int = 1, seq_len: int | None = None, repeats: int = 5) -> float:
    """Median wall time in milliseconds of one eval-mode forward pass on random tokens (B, T).

    One untimed warm-up call first (lazy initialisation, allocator). The tokens are drawn from a
    private generator, so timing never moves the global random state.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 1")
    T = model.config.block_size if seq_len is None else seq_len
    if not 1 <= T <= model.config.block_size:
        raise ValueError(f"seq_len={seq_len!r} must be in [1, block_size={model.config.block_size}]")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(model.config.vocab_size, (batch_size, T), generator=generator).to(device)  # (B, T)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                start = time.perf_counter()
                model(idx)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i > 0:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * statistics.median(times)
