"""What a configuration costs: parameters, FLOPs per token, memory, and measured forward time.

The counts come from the model itself, built on PyTorch's "meta" device (shapes only, no memory,
no arithmetic), so they can never drift from `model.py`. Memory is the fp32 training state:

    weights        4 bytes x N
    gradients      4 bytes x N
    AdamW state    8 bytes x N   (two moving averages per parameter: m and v)

Activations are left out of `ModelCost`: they depend on the batch size and are freed after each
step. `check_fits` adds a lower estimate of them (16 floats per token per block, 2 per token per
vocabulary entry for the logits and their gradient) and refuses, before anything is allocated, a
run that cannot fit in the memory the device has free: `--n-layer 100000000` is then one line,
not an hour of silence.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from .config import GPTConfig
from .model import GPT, Block
from .moe import MoE

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


def estimate_params(config: GPTConfig) -> int:
    """`model_cost(config).params` in constant time: one dense and one MoE block are built on the meta
    device and multiplied by their counts, so even a 100-million-layer config answers at once."""
    moe_blocks = config.n_layer // config.moe_every if config.n_expert > 0 else 0
    with torch.device("meta"):
        dense = sum(p.numel() for p in Block(config, config.moe_every if moe_blocks else 0).parameters()
                    ) if moe_blocks < config.n_layer else 0
        moe = sum(p.numel() for p in Block(config, config.moe_every - 1).parameters()) if moe_blocks else 0
        final = sum(p.numel() for p in torch.nn.LayerNorm(config.n_embd, bias=config.bias).parameters())
    embeddings = (config.vocab_size + config.block_size) * config.n_embd  # wte (tied with lm_head) and wpe
    return embeddings + (config.n_layer - moe_blocks) * dense + moe_blocks * moe + final


def training_bytes_estimate(config: GPTConfig, rows: int, seq_len: int | None = None,
                            params: int | None = None) -> int:
    """A lower estimate of one training step's memory: fp32 weights, gradients and AdamW state (16 bytes
    per parameter, as `ModelCost.training_bytes`), plus the activations of `rows` sequences of `seq_len`
    tokens (block_size by default). `params` saves recounting when the caller has `estimate_params`."""
    tokens = rows * (config.block_size if seq_len is None else seq_len)
    activations = FP32_BYTES * tokens * (16 * config.n_embd * config.n_layer + 2 * config.vocab_size)
    return 4 * FP32_BYTES * (estimate_params(config) if params is None else params) + activations


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new run on `device` (None when it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config: GPTConfig, rows: int, device: torch.device, seq_len: int | None = None,
               available: int | None = None) -> None:
    """Raise ValueError, before anything is allocated, when a training step cannot fit on `device`."""
    available = available_bytes(device) if available is None else available
    params = estimate_params(config)
    needed = training_bytes_estimate(config, rows, seq_len, params)
    if available is not None and needed > available:
        raise ValueError(
            f"this run needs at least {format_bytes(needed)} ({format_count(params)} parameters "
            f"x 16 bytes for weights, gradients and AdamW, plus activations of {rows} x "
            f"{config.block_size if seq_len is None else seq_len} tokens) but {device} has "
            f"{format_bytes(available)} free; use a smaller model (--n-layer, --n-embd, --block-size) or --batch-size"
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


@dataclass(frozen=True)
class MoELayerCost:
    """One MoE layer of `config`, counted on the meta device: what it stores and what one token uses."""

    params: int  # router, the E routed experts, the shared experts (and their gate)
    active_params: int  # router, k routed experts, shared experts (and gate)
    matmul_weights_per_token: int  # weights a token multiplies with: router, k routed and the shared experts


def moe_layer_cost(config: GPTConfig) -> MoELayerCost:
    """Parameter and per-token counts of one MoE layer of `config`, without allocating its weights.
    With n_expert=1 and top_k=1 the layer has no router: it is a dense MLP of width `expert_width`."""
    with torch.device("meta"):
        layer = MoE(config)
    router = 0 if layer.router is None else layer.router.weight.numel()
    gate = 0 if layer.shared_expert_gate is None else layer.shared_expert_gate.weight.numel()
    return MoELayerCost(params=sum(p.numel() for p in layer.parameters()), active_params=layer.active_params(),
                        matmul_weights_per_token=router + gate + layer.matmul_weights_per_token())
