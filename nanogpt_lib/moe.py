"""Mixture of Experts: a router sends each token to k of E expert MLPs.

A dense block applies one MLP to every token. An MoE block holds E MLPs (the experts) and a
router, a linear map without bias from the hidden state x (C numbers) to E logits:

    logits = x W_r                       W_r: (C, E)
    p      = softmax(logits)             router probabilities, sum to 1 over the E experts
    top-k  = the k experts with the largest p
    w_j    = p_j / sum_{i in top-k} p_i  for k >= 2: the chosen weights renormalised to sum to 1
    w_1    = p_1                         for k = 1: the probability itself (Switch Transformer),
                                         since renormalising would make it the constant 1
    y      = sum_j w_j * expert_j(x)     the k outputs are added, weighted

The convention matters for learning: the router's only gradient from the language-model loss
flows through the weights w. With k = 1 and renormalisation, w = 1 and the router would learn
from the auxiliary losses alone.

Capacity. Switch Transformer ran on TPUs, whose compiled programs need every tensor shape fixed in
advance, so each expert had a buffer of exactly `capacity` rows. This code keeps the rule, each expert
takes at most

    capacity = ceil(capacity_factor * N * k / E)

of the N tokens in a batch (N * k / E is its share under perfect balance). Seats are given in
order of preference: every token's first choice before any token's second choice, and within a
choice in token order. A choice that finds its expert full is dropped: that expert adds nothing
for that token, which still goes on through the residual connection (x + 0). Drops are counted.
PyTorch does not need fixed shapes, so `dispatch_vectorised`'s buffer has as many rows as the fullest
expert uses (at most `capacity`): the drops are those of a fixed buffer, the memory only what is used.

Three dispatch implementations compute the same thing. `dispatch_loop` takes the experts one at a
time (easy to read: the reference); `dispatch_vectorised` copies the kept tokens into one (E, S, C)
buffer, S rows for every expert (as many as the busiest one needs), and runs all experts with two
batched matrix products; `dispatch_grouped` (the default) sorts every choice by expert and runs
each expert on its own rows only, with grouped matrix products (`F.grouped_mm`), so an imbalanced
router costs no padding, and nothing waits for a number from the device (on a CPU, or a bfloat16 model on
a GPU with grouped-GEMM kernels; elsewhere it falls back to the padded buffer: `grouped_mm_supported`).

Two auxiliary losses keep routing healthy; both are returned, never stored in a global:

    load balancing (Switch):  L_aux = E * sum_i f_i * P_i
        f_i = share of the N * k choices that picked expert i (counted before capacity)
        P_i = mean router probability of expert i over the N tokens
    L_aux = 1 when routing is perfectly balanced (f_i = P_i = 1/E); its ceiling is E / k, reached when
    every token sends its k choices to the same k experts (E for top-1: everything on one expert),
    since a token picks an expert at most once, so f_i <= 1/k. Only P carries gradient, pushing
    probability away from crowded experts. `transformers`' Mixtral, Qwen-MoE, OLMoE and gpt-oss count f
    per token (k times this); DeepSeek-V3 computes it per sequence (see `load_balancing_loss`).

    router z-loss (ST-MoE):   L_z = mean over tokens of (logsumexp(logits))^2
    keeps the logits small, so the softmax does not saturate and float rounding stays harmless.

Part 3: today's designs, each one setting of `GPTConfig` on top of the above.

    SwiGLU experts (expert_type="swiglu"):   y = W_down (silu(x W_gate) * (x W_up))
        three matrices instead of two; W_gate and W_up are fused into one (E, C, 2H) tensor.
    fine-grained experts (expert_hidden):    more, narrower experts with a larger k, same active size.
    shared experts (n_shared_expert = S):    y = sum_j w_j * expert_j(x) + shared(x)
        S always-active experts (DeepSeekMoE); stored as one expert S times as wide, which computes
        the same sum (with one output bias instead of S). Qwen2-MoE (shared_expert_gate=True) scales
        them by their own gate: + sigmoid(x w_g) * shared(x).
    sigmoid router (router_type="sigmoid"):  s_i = sigmoid(logit_i), each expert scored on its own
        (DeepSeek-V3); the chosen scores are renormalised for the weights, and P in L_aux uses s / sum(s).
        The z-loss, which bounds the softmax's normaliser, is 0 for a sigmoid router.
    group-limited routing (n_group, topk_group), DeepSeek-V3: the E experts form n_group groups, a group
        scores the sum of its 2 best experts, and a token picks its k experts inside its topk_group best
        groups only (in training: experts of a group live on one device, so a token reaches few devices).
    routed_scaling_factor = r, DeepSeek-V3:  y = r * sum_j w_j * expert_j(x) + shared(x)   (r = 2.5)
    auxiliary-loss-free balancing (bias_update_rate = u > 0), DeepSeek-V3:
        top-k   = the k largest s_i + b_i      the balancing bias b only decides which experts are chosen
        w_j     = s_j (renormalised)           the weights use the unbiased scores
        after each optimisation step:  b_i <- b_i + u * sign(mean load - load_i)   (u = 0: b frozen)
        An overloaded expert becomes a little less attractive, an idle one more, with no loss term
        and no gradient: the router's gradient stays the language model's alone. (This b is not a
        Linear's bias; it is stored as the buffer `expert_bias` and called `balance_bias` in code.)
    gpt-oss: a router with a Linear bias (router_bias=True), logits = x W_r + b_r; top-k of the logits,
        softmax over those k only, which is the full softmax renormalised over the chosen k
        (norm_topk_prob=True); experts with biases (bias=True) and a clamped SwiGLU
        (expert_type="clamped_swiglu", see `Experts.activate`).
    `norm_topk_prob` chooses the weight convention: None (above), True (always renormalise:
    Mixtral, Qwen3-MoE, DeepSeek-V3; with k = 1 the weight is then 1), False (raw scores: Switch,
    Qwen2-MoE, OLMoE).

Shapes: N = tokens (B * T), C = n_embd, E = experts, k = top_k, H = hidden width of one expert
(`GPTConfig.expert_width`), S = buffer rows per expert (vectorised), M = N * k rows (grouped), G = n_group.

The module reads in the order of a forward pass: routing, experts, dispatch, losses, the layer, and
the balancing bias that runs after the optimiser's step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AUX_LOSS_TYPES, EXPERT_TYPES, ROUTER_TYPES, GPTConfig


# ---------------------------------------------------------------- routing
@dataclass
class Routing:
    """Where the N tokens of a batch go."""

    logits: torch.Tensor  # (N, E) router logits
    probs: torch.Tensor  # (N, E) router probabilities: the softmax, or the sigmoid scores normalised to sum 1
    experts: torch.Tensor  # (N, k) chosen experts, most preferred first
    weights: torch.Tensor  # (N, k) combine weights (see the module docstring)
    slot: torch.Tensor  # (N, k) seat of each choice in its expert's buffer (0, 1, ...)
    kept: torch.Tensor  # (N, k) bool: the choice found a seat (slot < capacity)
    capacity: int  # seats per expert
    counts: torch.Tensor  # (E,) how many of the N * k choices picked each expert, before capacity
    by_expert: torch.Tensor  # (k * N,) the choices, choice-major (j * N + t), stably sorted by expert

    @property
    def n_expert(self) -> int:
        return self.probs.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[1]

    @property
    def dropped_fraction(self) -> torch.Tensor:
        """Share of the N * k choices that found their expert full."""
        return 1.0 - self.kept.float().mean()

    def expert_counts(self) -> torch.Tensor:
        """(E,) how many of the N * k choices picked each expert, before capacity."""
        return self.counts

    def expert_share(self) -> torch.Tensor:
        """(E,) share of the N * k choices that picked each expert, before capacity (sums to 1)."""
        return self.expert_counts().float() / self.experts.numel()


def expert_counts(experts: torch.Tensor, n_expert: int) -> torch.Tensor:
    """(n_expert,) how often each expert id occurs in `experts` (any shape). Unlike `torch.bincount`, whose
    length depends on the largest id, the length is known before the ids are read: no wait for the device,
    and one graph under `torch.compile`."""
    flat = experts.reshape(-1)
    return torch.zeros(n_expert, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def expert_capacity(n_tokens: int, n_expert: int, top_k: int, factor: float | None) -> int:
    """Seats per expert: ceil(factor * N * k / E), never more than N (a token picks an expert once).

    `factor=None` means no limit (N seats: nothing can be dropped).
    """
    if factor is None:
        return n_tokens
    return min(n_tokens, math.ceil(factor * n_tokens * top_k / n_expert))


def group_limit(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """DeepSeek-V3's group-limited routing: the choice scores (N, E) with every expert outside the
    token's `topk_group` best groups set to -inf. The E experts form `n_group` groups of E / G in index
    order; a group's score is the sum of its two best experts' choice scores."""
    if n_group == 1:
        return choice
    N, E = choice.shape
    grouped = choice.view(N, n_group, E // n_group)  # (N, G, E / G)
    group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
    best = group_score.topk(topk_group, dim=-1).indices  # (N, topk_group)
    allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)  # (N, G)
    return grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).view(N, E)


def route(logits: torch.Tensor, top_k: int, capacity: int, *, router_type: str = "softmax",
          balance_bias: torch.Tensor | None = None, norm_topk_prob: bool | None = None, n_group: int = 1,
          topk_group: int = 1, routed_scaling_factor: float = 1.0) -> Routing:
    """Top-k choice, combine weights and capacity seats from router logits (N, E).

    `router_type` "softmax": scores are probabilities (Part 2, Mixtral); "sigmoid": each expert's
    score is sigmoid(logit) on its own (DeepSeek-V3). `balance_bias` (E,) is added to the scores for the
    choice only, never to the weights (auxiliary-loss-free balancing). `n_group` > 1 limits the choice
    to each token's `topk_group` best groups (`group_limit`). `norm_topk_prob` renormalises the k chosen
    scores to sum 1; None does so only for k >= 2 (see the module docstring). The weights are then
    multiplied by `routed_scaling_factor`.
    """
    N, E = logits.shape
    if router_type == "softmax":
        scores = F.softmax(logits, dim=-1)  # (N, E), sum to 1
        probs = scores
    elif router_type == "sigmoid":
        scores = torch.sigmoid(logits)  # (N, E), each in (0, 1) on its own
        probs = scores / scores.sum(dim=-1, keepdim=True)  # (N, E): for the balancing loss and statistics
    else:
        raise ValueError(f"router_type={router_type!r} is not known; choose one of {ROUTER_TYPES}")
    choice = scores if balance_bias is None else scores + balance_bias  # (N, E): moves choices, not weights
    choice = group_limit(choice, n_group, topk_group)  # (N, E): -inf outside the best groups
    experts = torch.topk(choice, top_k, dim=-1).indices  # (N, k), most preferred first
    top = scores.gather(1, experts)  # (N, k): the unbiased scores of the chosen experts
    renormalise = top_k > 1 if norm_topk_prob is None else norm_topk_prob
    weights = top / top.sum(dim=-1, keepdim=True) if renormalise else top  # (N, k)
    if routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    # Seats, first choices first: order the N * k choices choice-major; a choice's seat is how many choices
    # before it in that order picked the same expert. A stable sort by expert lines the choices up expert
    # after expert, each expert's in arrival order, so a seat is its place in that whole order minus where
    # its expert's line starts.
    order = experts.t().reshape(-1)  # (k * N,): all first choices, then all second choices, ...
    by_expert = torch.argsort(order, stable=True)  # (k * N,): choice indices, expert by expert
    place = torch.empty_like(by_expert).scatter_(0, by_expert, torch.arange(order.numel(), device=order.device))
    counts = expert_counts(order, E)  # (E,)
    start = counts.cumsum(0) - counts  # (E,): where each expert's line starts
    slot = (place - start[order]).view(top_k, N).t()  # (k * N,) -> (N, k): 0 for the first to arrive
    return Routing(logits=logits, probs=probs, experts=experts, weights=weights, slot=slot,
                   kept=slot < capacity, capacity=capacity, counts=counts, by_expert=by_expert)


# ------------------------------------------------------ grouped products
def _grouped_matmul(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows ends[e-1]:ends[e] of x (M, in) times weight[e] (in, out), for every e: (M, out). ends[-1] = M."""
    return F.grouped_mm(x, weight, offs=ends)


def _grouped_weight_grad(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(E, in, out): group e's rows of x (M, in) transposed times its rows of grad (M, out)."""
    return F.grouped_mm(x.t(), grad, offs=ends)


def _grouped_matmul_backward(ctx, grad: torch.Tensor):
    """d/dx = grad times each group's weight transposed; d/dweight[e] = x_e^T grad_e (rows of group e)."""
    x, weight, ends = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grouped_matmul(grad, weight.transpose(1, 2), ends)  # (M, in)
    # an expert with no rows gets exactly zero (some CUDA kernels have left garbage there: pytorch#172439)
    empty = torch.diff(ends, prepend=ends.new_zeros(1)) == 0  # (E,)
    grad_weight = grouped_weight_grad(x, grad, ends).masked_fill(empty[:, None, None], 0.0)  # (E, in, out)
    return grad_x, grad_weight, None


def _grouped_matmul_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


if hasattr(F, "grouped_mm") and hasattr(torch.library, "custom_op"):
    # Two operators that torch.compile takes whole, their output shapes declared here (`register_fake`):
    # torch's own shape rule for grouped_mm accepts bfloat16 only, while the CPU kernel also runs float32.
    grouped_matmul = torch.library.custom_op("nanogpt_lib::grouped_matmul", _grouped_matmul, mutates_args=())
    grouped_matmul.register_fake(lambda x, weight, ends: x.new_empty(x.shape[0], weight.shape[-1]))
    grouped_matmul.register_autograd(_grouped_matmul_backward, setup_context=_grouped_matmul_setup)
    grouped_weight_grad = torch.library.custom_op("nanogpt_lib::grouped_weight_grad", _grouped_weight_grad,
                                                  mutates_args=())
    grouped_weight_grad.register_fake(lambda x, grad, ends: x.new_empty(ends.shape[0], x.shape[1], grad.shape[1]))
else:  # an older torch: `grouped_mm_supported` says False, and the grouped dispatch uses the padded buffer
    grouped_matmul = grouped_weight_grad = None


# ---------------------------------------------------------------- experts

class BatchedLinear(nn.Module):
    """E independent linear maps stored as one tensor: weight (E, in, out), bias (E, out)."""

    def __init__(self, n_expert: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_expert, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_expert, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's start for every expert alike: weights N(0, 0.02), biases 0."""
        nn.init.normal_(self.weight, mean=0.0, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All experts at once: (E, S, in) -> (E, S, out)."""
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)  # bias (E, 1, out) + x @ W

    def one(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `expert` alone: (n, in) -> (n, out)."""
        y = x @ self.weight[expert]
        return y if self.bias is None else y + self.bias[expert]

    def grouped(self, x: torch.Tensor, rows: GroupedRows) -> torch.Tensor:
        """Each expert on its own rows: (M, in) -> (M, out), the rows sorted by expert (see `GroupedRows`)."""
        y = grouped_matmul(x, self.weight, rows.ends)  # (M, out)
        return y if self.bias is None else y + self.bias.index_select(0, rows.expert)  # + (M, out)


class Experts(nn.Module):
    """E feed-forward experts, their weights batched along a first axis. Three kinds:

    "gelu"            GPT-2's MLP:  y = W_proj gelu(W_fc x)                 c_fc (E, C, H), c_proj (E, H, C)
    "swiglu"          gated MLP:    y = W_down (silu(W_gate x) * (W_up x))  gate_up_proj (E, C, 2H), down_proj (E, H, C)
    "clamped_swiglu"  gpt-oss's gated MLP (same tensors), see `activate`

    SwiGLU (LLaMA, Mixtral, Qwen, DeepSeek) multiplies two projections of x, one passed through
    silu(a) = a * sigmoid(a), so each hidden unit is a learned gate times a value. Its gate and up
    matrices are stored side by side in one tensor (first H columns: gate, last H: up), so one
    matrix product computes both, as `transformers`' Mixtral does.
    """

    def __init__(self, n_expert: int, n_embd: int, hidden: int, kind: str = "gelu", bias: bool = True,
                 dropout: float = 0.0, swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0):
        super().__init__()
        self.kind = kind
        self.swiglu_alpha, self.swiglu_limit = swiglu_alpha, swiglu_limit
        E, C, H = n_expert, n_embd, hidden
        if kind == "gelu":
            self.c_fc = BatchedLinear(E, C, H, bias=bias)
            self.c_proj = BatchedLinear(E, H, C, bias=bias)
        elif kind in ("swiglu", "clamped_swiglu"):
            self.gate_up_proj = BatchedLinear(E, C, 2 * H, bias=bias)
            self.down_proj = BatchedLinear(E, H, C, bias=bias)
        else:
            raise ValueError(f"expert kind {kind!r} is not known; choose one of {EXPERT_TYPES}")
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def routed(cls, config: GPTConfig) -> Experts:
        """The E routed experts of an MoE layer."""
        return cls(config.n_expert, config.n_embd, config.expert_width, config.expert_type, config.bias,
                   config.dropout, config.swiglu_alpha, config.swiglu_limit)

    @classmethod
    def shared(cls, config: GPTConfig) -> Experts:
        """The S shared experts of an MoE layer, as one expert S times as wide (the same sum)."""
        return cls(1, config.n_embd, config.n_shared_expert * config.expert_width, config.expert_type,
                   config.bias, config.dropout, config.swiglu_alpha, config.swiglu_limit)

    @property
    def linears(self) -> tuple[BatchedLinear, BatchedLinear]:
        """(into the hidden layer, out of it), whatever the kind."""
        return (self.c_fc, self.c_proj) if self.kind == "gelu" else (self.gate_up_proj, self.down_proj)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """Between the two matrices: (..., H) -> (..., H) for GELU, (..., 2H) -> (..., H) for SwiGLU.

        gpt-oss's clamped SwiGLU bounds both halves (limit l = 7) and adds 1 to the value:
            gate <- min(gate, l),  up <- clamp(up, -l, l),  h = (up + 1) * gate * sigmoid(alpha * gate)
        with alpha = 1.702, which makes gate * sigmoid(alpha * gate) close to GELU.
        """
        if self.kind == "gelu":
            return F.gelu(h, approximate="tanh")  # GPT-2's tanh form
        gate, up = h.chunk(2, dim=-1)  # (..., H) each
        if self.kind == "swiglu":
            return F.silu(gate) * up
        gate = gate.clamp(max=self.swiglu_limit)
        up = up.clamp(-self.swiglu_limit, self.swiglu_limit)
        return (up + 1) * gate * torch.sigmoid(self.swiglu_alpha * gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on its own rows: (E, S, C) -> (E, S, C)."""
        fc, proj = self.linears
        return self.dropout(proj(self.activate(fc(x))))

    def one(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """One expert on the tokens sent to it: (n, C) -> (n, C)."""
        fc, proj = self.linears
        return self.dropout(proj.one(expert, self.activate(fc.one(expert, x))))

    def grouped(self, x: torch.Tensor, rows: GroupedRows) -> torch.Tensor:
        """Each expert on its own rows, sorted by expert: (M, C) -> (M, C)."""
        fc, proj = self.linears
        return self.dropout(proj.grouped(self.activate(fc.grouped(x, rows)), rows))

    def params_per_expert(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    def matmul_weights_per_expert(self) -> int:
        """Weights one expert multiplies with (its biases left out): what FLOP counts use."""
        return sum(lin.weight[0].numel() for lin in self.linears)


# --------------------------------------------------------------- dispatch
def dispatch_loop(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Expert by expert: gather its tokens, run it, add its weighted output to them. (N, C) -> (N, C)."""
    out = torch.zeros_like(x)  # dropped choices add nothing
    for e in range(routing.n_expert):
        token, choice = torch.where(routing.kept & (routing.experts == e))  # (n,), (n,)
        if token.numel() == 0:
            continue
        y = experts.one(e, x[token])  # (n, C)
        w = routing.weights[token, choice].unsqueeze(1)  # (n, 1)
        out.index_add_(0, token, w * y)  # a token's k outputs are summed, never overwritten
    return out


def dispatch_vectorised(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """All experts at once on an (E, S, C) buffer of the kept tokens. (N, C) -> (N, C)."""
    N, C = x.shape
    k = routing.experts.shape[1]
    kept = routing.kept.flatten()  # (N * k,)
    token = torch.arange(N, device=x.device).repeat_interleave(k)[kept]  # (M,) M = kept choices
    expert = routing.experts.flatten()[kept]  # (M,)
    slot = routing.slot.flatten()[kept]  # (M,)
    weight = routing.weights.flatten()[kept].unsqueeze(1)  # (M, 1)
    rows = int(slot.max()) + 1 if slot.numel() else 0  # S: the fullest expert's seats, <= capacity
    buffer = x.new_zeros(routing.n_expert, rows, C)  # (E, S, C); empty seats stay zero
    buffer[expert, slot] = x[token]
    y = experts(buffer)  # (E, S, C)
    return torch.zeros_like(x).index_add_(0, token, (weight * y[expert, slot]).to(x.dtype))  # (N, C)


@dataclass
class GroupedRows:
    """All N * k choices of a batch as rows sorted by expert: expert 0's rows, then expert 1's, ...

    Taken from the stable sort that `route` made for the seats. A dropped choice keeps its row, which is
    masked out when the rows are added back: its expert computes it and it adds nothing, value or gradient
    (even where it overflowed: a mask, not a multiplication by 0). So the rows are always
    M = N * k, whatever the router does: the cost does not grow with its imbalance, no shape depends on
    the routing (nothing waits for the device; `torch.compile` sees one graph), and a capacity limit
    changes what is added, not what is computed.
    """

    token: torch.Tensor  # (M,) the token each row copies
    expert: torch.Tensor  # (M,) the expert each row goes to
    weight: torch.Tensor | None  # (M, 1) its combine weight (None where the rows are not combined here)
    kept: torch.Tensor | None  # (M, 1) bool: False for a choice dropped by capacity (None: idem)
    ends: torch.Tensor  # (E,) int32: expert e's rows end at ends[e] (F.grouped_mm's `offs`)

    @classmethod
    def of(cls, routing: Routing) -> GroupedRows:
        N = routing.experts.shape[0]
        chosen = routing.by_expert  # (M,): choice-major indices j * N + t, sorted by expert

        def rows(per_choice: torch.Tensor) -> torch.Tensor:  # (N, k) -> (M,), in the sorted order
            return per_choice.t().reshape(-1).index_select(0, chosen)

        return cls(token=chosen % N, expert=rows(routing.experts), weight=rows(routing.weights).unsqueeze(1),
                   kept=rows(routing.kept).unsqueeze(1), ends=routing.counts.cumsum(0).to(torch.int32))


def grouped_mm_supported(x: torch.Tensor, experts: Experts) -> bool:
    """Whether `F.grouped_mm` runs these experts on `x` without waiting for the device: float32, bfloat16
    or float16 on the CPU; on CUDA a bfloat16 model on a GPU with grouped-GEMM kernels (compute capability
    9 or 10: H100, H200, B200), since elsewhere torch's fallback copies the group ends to the host; and
    every row of every matrix a multiple of 16 bytes long (the kernels' alignment). A float32 model on a
    GPU therefore uses the padded buffer: train it in bfloat16 to get the grouped path."""
    if grouped_matmul is None:
        return False
    if x.device.type == "cpu":
        allowed = (torch.float32, torch.bfloat16, torch.float16)
    elif x.device.type == "cuda" and torch.version.cuda and torch.cuda.get_device_capability(x.device)[0] in (9, 10):
        allowed = (torch.bfloat16,)
    else:
        return False
    if x.dtype not in allowed or any(lin.weight.dtype != x.dtype for lin in experts.linears):
        return False
    widths = {x.shape[-1], *(w for lin in experts.linears for w in lin.weight.shape[1:])}
    return all(w * x.element_size() % 16 == 0 for w in widths)


def dispatch_grouped(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Every choice once, its row sorted by expert, each expert on its own rows (`F.grouped_mm`).
    (N, C) -> (N, C). Where the installed torch cannot (`grouped_mm_supported`), the padded buffer of
    `dispatch_vectorised`."""
    if not grouped_mm_supported(x, experts):
        return dispatch_vectorised(x, routing, experts)
    rows = GroupedRows.of(routing)
    y = experts.grouped(x.index_select(0, rows.token), rows)  # (M, C)
    added = torch.where(rows.kept, rows.weight * y, 0.0)  # (M, C): dropped rows add exactly nothing
    return torch.zeros_like(x).index_add_(0, rows.token, added.to(x.dtype))  # (N, C)


DISPATCH = {"grouped": dispatch_grouped, "vectorised": dispatch_vectorised, "loop": dispatch_loop}


# ----------------------------------------------------------------- losses
LOSS_CONVENTIONS = AUX_LOSS_TYPES  # the old name


def load_balancing_loss(routing: Routing, convention: str = "switch", seq_len: int | None = None,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """The balancing loss of `routing`, in one of four conventions (GPTConfig.aux_loss_type):

    "switch"    Switch Transformer's E * sum_i f_i * P_i, f_i the share of the N * k choices that
                picked expert i (f sums to 1): 1 when balanced, at most E / k (all on k experts).
    "mixtral"   `transformers`' `load_balancing_loss_func`, whose f_i counts choices per token
                (f sums to k): k times the Switch value, k at balance. Its pooling over layers is the
                loss of the layers' logits concatenated.
    "qwen"      the same function: Qwen2-MoE's and Qwen3-MoE's modules in `transformers` (and OLMoE's,
                gpt-oss's) carry identical copies of it; the name is here for readers coming from Qwen.
    "sequence"  DeepSeek-V3's sequence-wise loss: Switch's value on each sequence of `seq_len` tokens
                on its own, averaged over the sequences. In the paper's notation, per sequence of T tokens,
                    f_i = E / (k T) * sum_t 1[i chosen by t],   P_i = 1/T sum_t s'_{i,t},   L = sum_i f_i P_i
                with s' the scores normalised to sum 1 (our `probs`). It punishes a sequence that
                crowds a few experts even when the batch as a whole is balanced.

    Only P carries gradient. The N tokens are the B sequences one after the other (B * T, as the
    layer flattens them). `counts` (E,), when given, are the choices per expert that f is computed
    from instead of this batch's own: those of the global batch (every micro-batch of an optimisation
    step, on every process), while P stays this batch's. Averaged over equal micro-batches, the losses
    then add up to the global batch's E * sum_i f_i * P_i (Qwen's "global-batch" balancing). The
    sequence-wise loss has no global form: its f is each sequence's own.
    """
    if convention not in AUX_LOSS_TYPES:
        raise ValueError(f"convention={convention!r} is not known; choose one of {AUX_LOSS_TYPES}")
    E = routing.n_expert
    if convention == "sequence":
        if counts is not None:
            raise ValueError("counts (global-batch balancing) do not apply to the sequence-wise loss, whose f is "
                             "each sequence's own; use balance_scope='micro_batch' with aux_loss_type='sequence'")
        N = routing.probs.shape[0]
        if seq_len is None or seq_len < 1 or N % seq_len:
            raise ValueError(f"seq_len={seq_len!r}: the sequence-wise loss needs the length of the sequences, "
                             f"a divisor of the N={N} tokens")
        # (N, E): 1 where a token chose the expert (scatter, not F.one_hot, which reads the ids back to check them)
        chosen = routing.probs.new_zeros(N, E).scatter_(1, routing.experts, 1.0)
        f = chosen.view(-1, seq_len, E).mean(dim=1) / routing.top_k  # (B, E) share of each sequence's choices
        P = routing.probs.view(-1, seq_len, E).mean(dim=1)  # (B, E) differentiable
        return E * (f * P).sum(dim=-1).mean()
    if counts is None:
        f = routing.expert_share()  # (E,) this batch's shares: no gradient
    else:
        f = counts.float() / counts.sum()  # (E,) the global batch's shares (float32: exact counts)
    P = routing.probs.mean(dim=0)  # (E,) differentiable
    loss = E * torch.sum(f * P)
    return loss if convention == "switch" else loss * routing.top_k


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's mean of logsumexp(logits)^2 over tokens: small logits, stable softmax."""
    return torch.logsumexp(logits, dim=-1).square().mean()


# ----------------------------------------------------------------- layer
@dataclass
class LayerStats:
    """What one MoE layer did on one batch: detached tensors on the layer's device, for logs and plots.

    They stay on the device: the forward pass never waits to read them. `MoEOutput.record` reads a
    whole step's statistics at once, and `float(stats.dropped)` reads one.
    """

    share: torch.Tensor  # (E,) share of choices per expert, before capacity
    dropped: torch.Tensor  # () share of choices over capacity
    entropy: torch.Tensor  # () mean router entropy in nats (ln E: uniform; 0: certain)
    max_prob: torch.Tensor  # () mean probability of the top expert
    balance_bias: torch.Tensor | None = None  # (E,) the balancing bias used for this batch's choices (None: none)
    counts: torch.Tensor | None = None  # (E,) choices per expert, before capacity (integers)


@dataclass
class MoELayerOutput:
    aux_loss: torch.Tensor  # load-balancing loss (scalar, with gradient)
    z_loss: torch.Tensor  # router z-loss (scalar, with gradient)
    stats: LayerStats


class MoE(nn.Module):
    """Drop-in replacement for the MLP: router + E experts. (B, T, C) -> (B, T, C) and the layer's losses.

    With one expert there is nothing to choose: no router weights, every token goes to the one
    expert with weight 1, and the block computes exactly what the dense MLP does.

    Part 3's options, each one setting (see the module docstring): SwiGLU experts, shared experts
    that every token uses (optionally gated), a sigmoid router, group-limited routing, scaled routed
    weights, a router with a bias, and a balancing bias updated by `update_balance_bias` after each
    optimisation step. `train_step` and the corpus loop call `update_expert_biases` for you; a loop of
    your own calls it after each `optimizer.step()`. Only training-mode forwards with gradients enabled
    count towards the load, so evaluation, generation and `torch.no_grad()` inspections do not.
    A sigmoid router always holds the balancing bias (a zero one, frozen, when the rate is 0: a learned
    bias can be kept fixed, as DeepSeek-V3 did at the end of its training).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_expert, self.top_k = config.n_expert, config.top_k
        self.capacity_factor, self.eval_capacity_factor = config.capacity_factor, config.eval_capacity_factor
        self.noise = config.router_noise
        self.dispatch = config.moe_dispatch
        self.router_type, self.norm_topk_prob = config.router_type, config.norm_topk_prob
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.aux_loss_type = config.aux_loss_type
        self.bias_update_rate = config.bias_update_rate
        self.router = None
        if config.n_expert > 1:
            self.router = nn.Linear(config.n_embd, config.n_expert, bias=config.router_bias)
        self.experts = Experts.routed(config)
        self.shared_experts = Experts.shared(config) if config.n_shared_expert > 0 else None
        # Qwen2-MoE: the shared experts' output times sigmoid(x w_g), a gate of their own
        self.shared_expert_gate = nn.Linear(config.n_embd, 1, bias=False) if config.shared_expert_gate else None
        if config.router_type == "sigmoid" or self.bias_update_rate > 0:
            # the balancing bias: a buffer, saved in checkpoints, never touched by the optimiser; with rate 0
            # it stays frozen. Its name `expert_bias` is the one checkpoints hold.
            self.register_buffer("expert_bias", torch.zeros(config.n_expert))
        else:
            self.expert_bias = None
        # (E,) choices per expert since the last update. A plain attribute, not a buffer: DDP would
        # overwrite every rank's count with rank 0's at each forward.
        self.load: torch.Tensor | None = None
        # with expert parallelism (`expert_parallel.shard_experts`), this process holds E/n experts and
        # sends tokens to the others through this group; None: every expert is here
        self.expert_group = None

    @property
    def balance_bias(self) -> torch.Tensor | None:
        """(E,) the auxiliary-loss-free balancing bias (stored as the buffer `expert_bias`), or None."""
        return self.expert_bias

    def forward(self, x: torch.Tensor, collect: bool = True,
                balance_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, MoELayerOutput | None]:
        """(B, T, C) -> (B, T, C), and the layer's losses and statistics (None with `collect=False`:
        evaluation and generation skip that work). `balance_counts` (E,): the global batch's choices per
        expert, for the balancing loss (see `load_balancing_loss`)."""
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C): routing ignores the batch and time axes
        routing = self.route(flat)
        if self.expert_group is None:
            y = DISPATCH[self.dispatch](flat, routing, self.experts)  # (N, C)
        else:  # the experts spread over processes: an all-to-all there and back
            y = self.expert_group.dispatch(flat, routing, self.experts)  # (N, C)
        if self.shared_experts is not None:  # every token, weight 1 (or its own gate)
            shared = self.shared_experts(flat.unsqueeze(0)).squeeze(0)  # (1, N, C) -> (N, C)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared  # (N, 1) * (N, C)
            y = y + shared
        if self.bias_update_rate > 0 and self.training and torch.is_grad_enabled():  # training forwards only
            counts = routing.expert_counts().to(self.expert_bias.dtype)  # (E,)
            self.load = counts if self.load is None else self.load.to(counts.device) + counts
        out = None
        if collect:
            # z-loss bounds the softmax's normaliser; a sigmoid router has none (it would only push logits down)
            z_loss = router_z_loss(routing.logits) if self.router_type == "softmax" else x.new_zeros(())
            aux_loss = load_balancing_loss(routing, self.aux_loss_type, seq_len=T, counts=balance_counts)
            out = MoELayerOutput(aux_loss=aux_loss, z_loss=z_loss, stats=layer_stats(routing, self.expert_bias))
        return y.view(B, T, C), out

    def route(self, x: torch.Tensor) -> Routing:
        """Routing of N hidden states (N, C), with the capacity of the current mode (train or eval)."""
        if self.router is None:
            logits = x.new_zeros(x.shape[0], 1)  # (N, 1): softmax 1, weight 1
            router_type = "softmax"
        else:
            logits = self.router(x)  # (N, E)
            router_type = self.router_type
            if self.training and self.noise > 0:  # exploration: other experts get a chance
                logits = logits + self.noise * torch.randn_like(logits)
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return route(logits, self.top_k, expert_capacity(x.shape[0], self.n_expert, self.top_k, factor),
                     router_type=router_type, balance_bias=self.expert_bias, norm_topk_prob=self.norm_topk_prob,
                     n_group=self.n_group, topk_group=self.topk_group,
                     routed_scaling_factor=self.routed_scaling_factor)

    @torch.no_grad()
    def update_balance_bias(self) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3): after an optimisation step, raise the bias of
        each expert that got fewer choices than the mean, lower it for those that got more.

            b_i <- b_i + rate * sign(mean_j load_j - load_i)

        The load is counted over the training forwards since the last update (all micro-batches,
        and all processes under torch.distributed). No gradient is involved.
        """
        if self.expert_bias is None or self.load is None:
            return
        load = self.load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every rank gets the same load, hence the same bias
        self.expert_bias += balance_bias_step(load, self.bias_update_rate)
        self.load = None

    update_bias = update_balance_bias  # the old name

    def active_params(self) -> int:
        """Parameters one token uses: the router, k of the E experts, and the shared experts (and their gate)."""
        router = 0 if self.router is None else sum(p.numel() for p in self.router.parameters())
        shared = 0 if self.shared_experts is None else self.shared_experts.params_per_expert()
        gate = 0 if self.shared_expert_gate is None else self.shared_expert_gate.weight.numel()
        return router + self.top_k * self.experts.params_per_expert() + shared + gate

    def matmul_weights_per_token(self) -> int:
        """Expert weights one token multiplies with (router excluded): k routed experts and the shared ones."""
        shared = 0 if self.shared_experts is None else self.shared_experts.matmul_weights_per_expert()
        return self.top_k * self.experts.matmul_weights_per_expert() + shared


@torch.no_grad()
def layer_stats(routing: Routing, balance_bias: torch.Tensor | None = None) -> LayerStats:
    p = routing.probs
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()
    return LayerStats(share=routing.expert_share(), dropped=routing.dropped_fraction.detach(), entropy=entropy,
                      max_prob=p.max(dim=-1).values.mean(),
                      balance_bias=None if balance_bias is None else balance_bias.clone(), counts=routing.counts)


@dataclass
class MoEOutput:
    """The MoE side of a forward pass: losses averaged over the MoE layers, and each layer's stats.

    `penalty` is what training adds to the cross-entropy: aux_loss_weight * aux_loss +
    z_loss_weight * z_loss. A dense model returns zeros and no layers.
    """

    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    penalty: torch.Tensor
    layers: list[LayerStats]

    @classmethod
    def collect(cls, outputs: list[MoELayerOutput], config: GPTConfig, device: torch.device) -> MoEOutput:
        if not outputs:
            zero = torch.zeros((), device=device)
            return cls(aux_loss=zero, z_loss=zero, penalty=zero, layers=[])
        aux = torch.stack([o.aux_loss for o in outputs]).mean()
        z = torch.stack([o.z_loss for o in outputs]).mean()
        return cls(aux_loss=aux, z_loss=z, penalty=config.aux_loss_weight * aux + config.z_loss_weight * z,
                   layers=[o.stats for o in outputs])

    def record(self) -> dict:
        """Plain numbers for a training log: losses, and per layer the shares, drops, entropy (and the
        balancing bias, under the key "bias" that saved logs use). Read from the device in one transfer."""
        values = {"aux_loss": self.aux_loss, "z_loss": self.z_loss,
                  "share": [s.share for s in self.layers], "dropped": [s.dropped for s in self.layers],
                  "entropy": [s.entropy for s in self.layers], "max_prob": [s.max_prob for s in self.layers]}
        if self.layers and self.layers[0].balance_bias is not None:  # the layers of a model share their config
            values["bias"] = [s.balance_bias for s in self.layers]
        return read_at_once(values)


def read_at_once(values: dict) -> dict:
    """`values` (each a tensor or a list of tensors, on one device) as Python numbers: a 0-dim tensor gives a
    float, any other a list. One transfer from the device, not one per number; float64, so a float32 value
    reads exactly as `float()` reads it."""
    tensors = [t for v in values.values() for t in (v if isinstance(v, list) else [v])]
    dtype = torch.float32 if tensors[0].device.type == "mps" else torch.float64  # MPS has no float64
    flat = torch.cat([t.detach().to(dtype).reshape(-1) for t in tensors]).tolist()
    out, at = {}, 0
    for key, v in values.items():
        read = []
        for t in v if isinstance(v, list) else [v]:
            read.append(flat[at:at + t.numel()] if t.dim() else flat[at])
            at += t.numel()
        out[key] = read if isinstance(v, list) else read[0]
    return out


# ---------------------------------------------------------- balancing bias
def balance_bias_step(load: torch.Tensor, rate: float) -> torch.Tensor:
    """DeepSeek-V3's bias change for an observed load (E,): +rate below the mean load, -rate above it."""
    return rate * torch.sign(load.mean() - load)


bias_step = balance_bias_step  # the old name


def update_expert_biases(model: nn.Module) -> None:
    """`MoE.update_balance_bias` for every MoE layer of `model` that balances with a bias (after optimizer.step())."""
    for module in model.modules():
        if isinstance(module, MoE):
            module.update_balance_bias()


def simulate_bias_balancing(scores: torch.Tensor, top_k: int, rate: float, steps: int) -> list[float]:
    """The bias rule alone on a frozen router: each step chooses top-k of `scores + bias` (N, E), counts
    the load and applies `balance_bias_step`. Returns the imbalance (busiest expert over the fair share)
    before each step and after the last one: steps + 1 values. No training, only the balancing mechanism."""
    if steps < 0 or not 0 <= rate < math.inf:
        raise ValueError(f"steps={steps}, rate={rate}: steps must be >= 0 and rate a finite number >= 0")
    balance_bias = torch.zeros(scores.shape[1])
    history = []
    for _ in range(steps + 1):
        experts = torch.topk(scores + balance_bias, top_k, dim=-1).indices  # (N, k)
        load = expert_counts(experts, scores.shape[1]).float()  # (E,)
        history.append(imbalance(load / load.sum()))
        balance_bias += balance_bias_step(load, rate)
    return history


def imbalance(share) -> float:
    """Busiest expert's share over the fair share 1/E: 1.0 is perfect balance, E / k is total collapse
    (a token picks an expert at most once, so an expert gets at most 1/k of the N * k choices)."""
    share = [float(v) for v in share]
    return max(share) * len(share)


def mean_imbalance(records: list[dict]) -> list[float]:
    """Per MoE layer, the mean `imbalance` over a run's routing records (`History.moe`)."""
    if not records:
        raise ValueError("no routing records: was the model dense, or the run empty?")
    layers = len(records[0]["share"])
    return [sum(imbalance(r["share"][i]) for r in records) / len(records) for i in range(layers)]


def balance_summary(records: list[dict]) -> tuple[float, float]:
    """(imbalance, dropped) of routing records (`History.moe`), each averaged over the MoE layers and
    the records: the busiest expert's share over the fair share, and the share of choices over capacity."""
    per_layer = mean_imbalance(records)
    layers = len(per_layer)
    dropped = sum(sum(r["dropped"]) for r in records) / (len(records) * layers)
    return sum(per_layer) / layers, dropped
