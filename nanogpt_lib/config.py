"""The model's hyper-parameters: one dataclass, checked when it is built.

The defaults are GPT-2 small (124M parameters). Part 1 of the series trains a much
smaller model (`part1_config`) on a single paragraph. Part 2 turns some MLPs into a Mixture of
Experts (`n_expert` > 0; see `moe.py`); with `n_expert = 0`, the default, the model is dense.
Part 3 adds the choices of today's MoE models (SwiGLU experts, shared experts, a sigmoid router
with an auxiliary-loss-free balancing bias, group-limited routing, gpt-oss's router bias and clamped
SwiGLU, Qwen2-MoE's gated shared expert, the balancing loss of each family); their defaults keep Part 2's
MoE unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

DISPATCHES = ("grouped", "vectorised", "loop")
# GPT-2's MLP, the gated SwiGLU of LLaMA, Mixtral, Qwen, DeepSeek, OLMoE, or gpt-oss's clamped variant
EXPERT_TYPES = ("gelu", "swiglu", "clamped_swiglu")
ROUTER_TYPES = ("softmax", "sigmoid")  # Part 2 / Mixtral, or DeepSeek-V3's independent scores
# the balancing loss a layer returns (see moe.load_balancing_loss): Switch's E sum f P, transformers'
# load_balancing_loss_func (Mixtral, and the same function in Qwen2/Qwen3-MoE, OLMoE, gpt-oss: k times
# Switch's), or DeepSeek-V3's sequence-wise loss (Switch's per sequence, averaged)
AUX_LOSS_TYPES = ("switch", "mixtral", "qwen", "sequence")
# the fields that fix the shapes of every tensor outside the MoE layers (a run can only continue a model that has them)
SHAPE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # longest context the model sees (positions 0..block_size-1)
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads per block; each gets n_embd // n_head dims
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout probability during training
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    # --- Mixture of Experts (Part 2); n_expert = 0 keeps every block dense
    n_expert: int = 0  # experts per MoE layer (1 is allowed: it equals the dense MLP)
    top_k: int = 2  # experts each token is sent to
    moe_every: int = 1  # blocks moe_every-1, 2*moe_every-1, ... are MoE (1: all, 2: every other)
    expert_hidden: int | None = None  # hidden width of one expert; None: as wide as the dense MLP (see expert_width)
    capacity_factor: float | None = 1.25  # training: slots per expert = factor * tokens * top_k / n_expert
    eval_capacity_factor: float | None = None  # the same in eval mode; None (default): no limit, nothing dropped
    aux_loss_weight: float = 0.01  # load-balancing loss weight (the loss: aux_loss_type)
    z_loss_weight: float = 0.001  # ST-MoE router z-loss weight (softmax routers; a sigmoid router has none)
    router_noise: float = 0.0  # std of Gaussian noise on router logits, training only
    moe_dispatch: str = "grouped"  # "grouped" (rows sorted by expert), "vectorised" (padded buffer), "loop"
    # --- today's MoE designs (Part 3); the defaults keep Part 2's MoE
    expert_type: str = "gelu"  # "gelu" (GPT-2 MLP) or "swiglu" (gated, fused gate_up weights)
    n_shared_expert: int = 0  # always-active experts added to the routed ones (DeepSeek), same width each
    router_type: str = "softmax"  # "softmax" (probabilities) or "sigmoid" (DeepSeek-V3 scores)
    norm_topk_prob: bool | None = None  # renormalise the k chosen weights; None: only when top_k >= 2
    bias_update_rate: float = 0.0  # loss-free balancing: per-step change of the balancing bias (0: none, or frozen)
    # --- the released models' remaining switches (Part 3); the defaults change nothing
    n_group: int = 1  # DeepSeek-V3: experts split into n_group groups; only the best topk_group groups compete
    topk_group: int = 1  # groups a token may choose its experts from (n_group=1: plain top-k)
    routed_scaling_factor: float = 1.0  # DeepSeek-V3: the routed experts' weights times this (2.5 in V3)
    router_bias: bool = False  # gpt-oss: the router is a Linear with a bias (logits = x W_r + b_r)
    swiglu_alpha: float = 1.702  # clamped_swiglu (gpt-oss): gate * sigmoid(alpha * gate)
    swiglu_limit: float = 7.0  # clamped_swiglu (gpt-oss): gate clamped to <= limit, up to [-limit, limit]
    shared_expert_gate: bool = False  # Qwen2-MoE: shared experts' output times sigmoid(x w_g), its own gate
    aux_loss_type: str = "switch"  # which balancing loss the layer returns (AUX_LOSS_TYPES)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"GPTConfig.{name}={value!r} is not allowed: it must be a positive integer"
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"each head gets n_embd // n_head dimensions, so n_head must divide n_embd "
                f"(allowed n_head for n_embd={self.n_embd}: {_divisors(self.n_embd)})"
            )
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"GPTConfig.dropout={dropout!r} is not allowed: it must be a number in [0, 1)"
            )
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias={self.bias!r} is not allowed: it must be True or False")
        self._check_moe()

    def _check_moe(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if not _is_int(self.n_expert) or self.n_expert < 0:
            fail("n_expert", "it must be an integer >= 0 (0: dense model)")
        if not _is_int(self.top_k) or self.top_k < 1:
            fail("top_k", "it must be an integer >= 1")
        if 0 < self.n_expert < self.top_k:
            fail("top_k", f"a token cannot go to more experts than the n_expert={self.n_expert} there are")
        if not _is_int(self.moe_every) or self.moe_every < 1:
            fail("moe_every", "it must be an integer >= 1 (1: every block, 2: every other block)")
        if self.n_expert > 0 and self.moe_every > self.n_layer:
            fail("moe_every", f"with n_layer={self.n_layer} no block would be MoE; use 1..{self.n_layer}")
        if self.expert_hidden is not None and (not _is_int(self.expert_hidden) or self.expert_hidden < 1):
            fail("expert_hidden", "it must be None (4 * n_embd) or an integer >= 1")
        for name in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value < math.inf):
                fail(name, "it must be None (no limit) or a finite number > 0")
        for name in ("aux_loss_weight", "z_loss_weight", "router_noise"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                fail(name, "it must be a finite number >= 0")
        if self.moe_dispatch not in DISPATCHES:
            fail("moe_dispatch", f"choose one of {DISPATCHES}")
        if self.expert_type not in EXPERT_TYPES:
            fail("expert_type", f"choose one of {EXPERT_TYPES}")
        if self.router_type not in ROUTER_TYPES:
            fail("router_type", f"choose one of {ROUTER_TYPES}")
        if not _is_int(self.n_shared_expert) or self.n_shared_expert < 0:
            fail("n_shared_expert", "it must be an integer >= 0")
        if self.n_shared_expert > 0 and self.n_expert == 0:
            fail("n_shared_expert", "shared experts belong to an MoE layer; set n_expert > 0 too")
        if self.norm_topk_prob not in (None, True, False):
            fail("norm_topk_prob", "it must be None (renormalise only when top_k >= 2), True or False")
        rate = self.bias_update_rate
        if not _is_number(rate) or not 0 <= rate < math.inf:
            fail("bias_update_rate", "it must be a finite number >= 0 (0: no balancing bias)")
        self._check_released_models()

    def _check_released_models(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if not _is_int(self.n_group) or self.n_group < 1:
            fail("n_group", "it must be an integer >= 1 (1: no groups)")
        if self.n_expert > 0 and self.n_expert % self.n_group:
            fail("n_group", f"it must divide n_expert={self.n_expert} (every group holds as many experts)")
        if not _is_int(self.topk_group) or not 1 <= self.topk_group <= self.n_group:
            fail("topk_group", f"it must be an integer in 1..n_group={self.n_group}")
        if self.n_group > 1 and self.n_expert > 0:
            per_group = self.n_expert // self.n_group
            if per_group < 2:
                fail("n_group", f"a group is scored by its best 2 experts; n_expert={self.n_expert} gives "
                                f"{per_group} per group")
            if self.topk_group * per_group < self.top_k:
                fail("topk_group", f"{self.topk_group} groups of {per_group} experts hold fewer than "
                                   f"top_k={self.top_k}")
        if not _is_number(self.routed_scaling_factor) or not 0 < self.routed_scaling_factor < math.inf:
            fail("routed_scaling_factor", "it must be a finite number > 0 (1: weights unchanged)")
        for name in ("router_bias", "shared_expert_gate"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "it must be True or False")
        if self.shared_expert_gate and self.n_shared_expert == 0:
            fail("shared_expert_gate", "it gates the shared experts; set n_shared_expert > 0 too")
        for name in ("swiglu_alpha", "swiglu_limit"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                fail(name, "it must be a finite number > 0")
        if self.aux_loss_type not in AUX_LOSS_TYPES:
            fail("aux_loss_type", f"choose one of {AUX_LOSS_TYPES}")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer` (0-based) holds a Mixture of Experts instead of the dense MLP."""
        return self.n_expert > 0 and layer % self.moe_every == self.moe_every - 1

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if self.is_moe_layer(i)]

    @property
    def expert_width(self) -> int:
        """Hidden width of one expert, `expert_hidden` when set.

        Otherwise the dense MLP's 4 * n_embd for GELU experts, and 8 * n_embd // 3 for SwiGLU experts:
        SwiGLU has three matrices instead of two, and 3 * C * (8C / 3) = 2 * C * 4C keeps the weights
        of one expert equal to the dense MLP's (LLaMA's choice).
        """
        if self.expert_hidden is not None:
            return self.expert_hidden
        return 4 * self.n_embd if self.expert_type == "gelu" else 8 * self.n_embd // 3

    @property
    def hidden_size(self) -> int:
        """The old name of `expert_width` (kept for code written before Part 3). Not `transformers`'
        `hidden_size`, which is the residual width, our `n_embd`."""
        return self.expert_width

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)


def part1_config(vocab_size: int) -> GPTConfig:
    """The seed post's minimal model: 4 layers, 4 heads, 128 dims, context 100."""
    return GPTConfig(
        block_size=100,
        vocab_size=vocab_size,
        n_layer=4,
        n_head=4,
        n_embd=128,
        dropout=0.2,
        bias=True,
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _divisors(n: int) -> str:
    divs = [str(d) for d in range(1, n + 1) if n % d == 0]
    return ", ".join(divs if len(divs) <= 12 else divs[:6] + ["..."] + divs[-3:])
