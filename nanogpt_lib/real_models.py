"""Released MoE models side by side: their published hyperparameters, counted with this project's code.

For each model, the MoE layers (router, routed and shared experts) are built as our `MoE` layer on the
meta device (`costs.moe_layer_cost`): those counts come from the same code that trains in this series.
What our GPT does not have is added analytically, term by term, from the published configuration:

    attention    grouped-query attention (GQA: fewer key/value heads than query heads, a head width of
                 its own), its biases (gpt-oss), QK-norm weights (Qwen3, OLMoE), gpt-oss's per-head
                 sinks; DeepSeek-V3's multi-head latent attention (MLA: queries and keys/values through
                 low-rank projections). Our GPT's attention is 4 C^2 (+ 4 C biases), which none of these use.
    embeddings   untied: an input embedding and an output matrix (lm_head), V x C each (ours: tied, once);
                 no learned positions (RoPE), where ours stores block_size x C.
    norms        RMSNorm: C weights each, two per block and one final (our bias-free LayerNorm: the same).
    dense layers DeepSeek-V3's first 3 blocks hold a dense SwiGLU MLP of width 18432 (counted as our layer
                 with one expert of that width: no router, the same matrices).

Active parameters count what one token uses: all of attention, embeddings and norms, and in each MoE
layer the router, k routed experts and the shared ones. Publishers differ on one term: OpenAI's active
count for gpt-oss leaves out the input embedding (a lookup, no arithmetic) and keeps the unembedding;
the others count both. `ModelRow.active_as_published` follows each publisher's convention.

Forward FLOPs per token: 2 per weight a token multiplies with (attention projections, router, k + shared
experts, dense MLPs, lm_head; not the input embedding, a lookup), plus attention's scores and weighted
sum, 2 T (d_qk + d_v) per head per layer at context T (no discount for the causal mask), as
`GPT.flops_per_token` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import GPTConfig
from .costs import moe_layer_cost

BF16_BYTES = 2


@dataclass(frozen=True)
class Attention:
    """A published attention design, enough to count its parameters and its FLOPs per token."""

    n_head: int
    head_dim: int  # query/key width per head (MLA: the no-position part plus the rotary part)
    n_kv_head: int = 0  # GQA key/value heads (0: MLA)
    bias: bool = False  # biases on q, k, v and the output projection (gpt-oss)
    qk_norm: int = 0  # weights of the query and key norms together, per layer
    sinks: bool = False  # gpt-oss: one learned sink logit per head
    q_lora_rank: int = 0  # MLA (DeepSeek-V3): queries through C -> q_lora_rank -> heads
    kv_lora_rank: int = 0  # MLA: keys and values through C -> kv_lora_rank (+ a shared rotary key)
    rope_dim: int = 0  # MLA: the rotary part of head_dim
    v_head_dim: int = 0  # MLA: value width per head (GQA: head_dim)

    def params(self, C: int) -> int:
        """Weights, biases and norms of one attention layer at residual width C."""
        if self.kv_lora_rank:  # MLA
            h, dq, dv = self.n_head, self.head_dim, self.v_head_dim
            q = C * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * dq  # down, norm, up
            kv = C * (self.kv_lora_rank + self.rope_dim) + self.kv_lora_rank  # down (+ rotary key), norm
            kv += self.kv_lora_rank * h * (dq - self.rope_dim + dv)  # up to no-position keys and values
            return q + kv + h * dv * C  # output projection
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        weights = C * q + 2 * C * kv + q * C
        biases = (q + 2 * kv + C) if self.bias else 0
        return weights + biases + self.qk_norm + (self.n_head if self.sinks else 0)

    def matmul_weights(self, C: int) -> int:
        """The weights of its matrix products (no biases, norms or sinks)."""
        extra = (self.q_lora_rank + self.kv_lora_rank) if self.kv_lora_rank else (
            ((self.n_head + 2 * self.n_kv_head) * self.head_dim + C if self.bias else 0)
            + self.qk_norm + (self.n_head if self.sinks else 0))
        return self.params(C) - extra

    def score_flops(self, seq_len: int) -> int:
        """q k^T and (att) v for one token against `seq_len` keys: 2 T (d_qk + d_v) per head."""
        dv = self.v_head_dim or self.head_dim
        return 2 * seq_len * self.n_head * (self.head_dim + dv)


@dataclass(frozen=True)
class PublishedModel:
    """A released MoE model: its configuration, and the counts its authors publish."""

    name: str
    n_layer: int
    n_embd: int  # transformers' hidden_size
    vocab_size: int
    n_expert: int
    top_k: int
    expert_width: int  # moe_intermediate_size (Mixtral, OLMoE, gpt-oss: intermediate_size)
    attention: Attention
    published_total: float  # parameters, as published
    published_active: float
    source: str
    n_shared_expert: int = 0
    expert_type: str = "swiglu"
    expert_bias: bool = False  # gpt-oss: biases in the experts' Linears
    router_bias: bool = False
    shared_expert_gate: bool = False
    n_dense_layers: int = 0  # DeepSeek-V3: the first blocks are dense
    dense_width: int = 0
    tied_embeddings: bool = False
    active_without_input_embedding: bool = False  # the publisher's active count leaves the lookup out (gpt-oss)

    def moe_config(self) -> GPTConfig:
        """Our GPTConfig for one of its MoE layers (block_size, n_head and vocab are placeholders)."""
        return GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_embd=self.n_embd, dropout=0.0,
                         bias=self.expert_bias, n_expert=self.n_expert, top_k=self.top_k,
                         expert_hidden=self.expert_width, expert_type=self.expert_type,
                         n_shared_expert=self.n_shared_expert, router_bias=self.router_bias,
                         shared_expert_gate=self.shared_expert_gate)


# Hyperparameters from each model's config.json on the Hugging Face Hub; published counts from the cited page.
MODELS = (
    PublishedModel("Mixtral 8x7B", n_layer=32, n_embd=4096, vocab_size=32000, n_expert=8, top_k=2,
                   expert_width=14336, attention=Attention(n_head=32, n_kv_head=8, head_dim=128),
                   published_total=46.7e9, published_active=12.9e9,
                   source="Mistral AI, 'Mixtral of experts' (2023): 46.7B total, 12.9B per token"),
    PublishedModel("OLMoE-1B-7B", n_layer=16, n_embd=2048, vocab_size=50304, n_expert=64, top_k=8,
                   expert_width=1024, attention=Attention(n_head=16, n_kv_head=16, head_dim=128, qk_norm=2 * 2048),
                   published_total=6.9e9, published_active=1.3e9,
                   source="Muennighoff et al., OLMoE (arXiv 2409.02060): 6.9B total, 1.3B active"),
    PublishedModel("Qwen3-30B-A3B", n_layer=48, n_embd=2048, vocab_size=151936, n_expert=128, top_k=8,
                   expert_width=768, attention=Attention(n_head=32, n_kv_head=4, head_dim=128, qk_norm=2 * 128),
                   published_total=30.5e9, published_active=3.3e9,
                   source="Qwen3-30B-A3B model card: 30.5B in total, 3.3B activated"),
    PublishedModel("Qwen3-235B-A22B", n_layer=94, n_embd=4096, vocab_size=151936, n_expert=128, top_k=8,
                   expert_width=1536, attention=Attention(n_head=64, n_kv_head=4, head_dim=128, qk_norm=2 * 128),
                   published_total=235e9, published_active=22e9,
                   source="Qwen3-235B-A22B model card: 235B in total, 22B activated"),
    PublishedModel("gpt-oss-20b", n_layer=24, n_embd=2880, vocab_size=201088, n_expert=32, top_k=4,
                   expert_width=2880, expert_type="clamped_swiglu", expert_bias=True, router_bias=True,
                   attention=Attention(n_head=64, n_kv_head=8, head_dim=64, bias=True, sinks=True),
                   published_total=20.91e9, published_active=3.61e9, active_without_input_embedding=True,
                   source="OpenAI, gpt-oss model card (2025), table 1: 20.91B total, 3.61B active"),
    PublishedModel("gpt-oss-120b", n_layer=36, n_embd=2880, vocab_size=201088, n_expert=128, top_k=4,
                   expert_width=2880, expert_type="clamped_swiglu", expert_bias=True, router_bias=True,
                   attention=Attention(n_head=64, n_kv_head=8, head_dim=64, bias=True, sinks=True),
                   published_total=116.83e9, published_active=5.13e9, active_without_input_embedding=True,
                   source="OpenAI, gpt-oss model card (2025), table 1: 116.83B total, 5.13B active"),
    PublishedModel("DeepSeek-V3", n_layer=61, n_embd=7168, vocab_size=129280, n_expert=256, top_k=8,
                   expert_width=2048, n_shared_expert=1, n_dense_layers=3, dense_width=18432,
                   attention=Attention(n_head=128, head_dim=192, q_lora_rank=1536, kv_lora_rank=512, rope_dim=64,
                                       v_head_dim=128),
                   published_total=671e9, published_active=37e9,
                   source="DeepSeek-AI, DeepSeek-V3 (arXiv 2412.19437): 671B total, 37B activated"),
)


@dataclass(frozen=True)
class ModelRow:
    """One line of the table: our counts and the published ones."""

    model: PublishedModel
    total: int
    active: int
    moe_total: int  # the part our MoE layer counts (all MoE layers)
    moe_active: int
    forward_flops_per_token: int  # at context `seq_len`
    seq_len: int

    @property
    def weight_bytes_bf16(self) -> int:
        return BF16_BYTES * self.total

    @property
    def total_gap(self) -> float:
        """(ours - published) / published."""
        return self.total / self.model.published_total - 1

    @property
    def active_as_published(self) -> int:
        """`active` in the publisher's convention (gpt-oss: without the input embedding)."""
        m = self.model
        return self.active - (m.vocab_size * m.n_embd if m.active_without_input_embedding else 0)

    @property
    def active_gap(self) -> float:
        return self.active_as_published / self.model.published_active - 1


def count(model: PublishedModel, seq_len: int = 4096) -> ModelRow:
    """Total and active parameters and forward FLOPs per token of `model` (see the module docstring)."""
    C, V, L = model.n_embd, model.vocab_size, model.n_layer
    n_moe = L - model.n_dense_layers
    moe = moe_layer_cost(model.moe_config())
    dense = None
    if model.n_dense_layers:  # one expert, top-1: no router, a dense SwiGLU MLP
        dense = moe_layer_cost(GPTConfig(**{**model.moe_config().to_dict(), "n_expert": 1, "top_k": 1,
                                            "expert_hidden": model.dense_width, "n_shared_expert": 0}))
    dense_params = model.n_dense_layers * (dense.params if dense else 0)
    dense_matmul = model.n_dense_layers * (dense.matmul_weights_per_token if dense else 0)
    attention = L * model.attention.params(C)
    norms = (2 * L + 1) * C  # RMSNorm weights: before attention, before the MLP, and the final one
    embeddings = V * C * (1 if model.tied_embeddings else 2)  # input embedding and lm_head
    shared = attention + norms + embeddings + dense_params  # what every token uses
    matmul = (L * model.attention.matmul_weights(C) + n_moe * moe.matmul_weights_per_token + dense_matmul
              + V * C)  # lm_head; the input embedding is a lookup
    flops = 2 * matmul + L * model.attention.score_flops(seq_len)
    return ModelRow(model=model, total=n_moe * moe.params + shared, active=n_moe * moe.active_params + shared,
                    moe_total=n_moe * moe.params, moe_active=n_moe * moe.active_params,
                    forward_flops_per_token=flops, seq_len=seq_len)


def table(seq_len: int = 4096) -> list[ModelRow]:
    """Every model of MODELS, counted."""
    return [count(m, seq_len) for m in MODELS]


def format_table(rows: list[ModelRow]) -> str:
    """The table as fixed-width text: ours and the published counts side by side (active in each
    publisher's convention), experts, k, shared experts, expert width, forward GFLOPs per token at the
    rows' context, and the weights' memory in bf16 (GB = 1e9 bytes)."""
    head = (f"{'model':<16} {'total':>8} {'publ.':>8} {'gap':>6} {'active':>7} {'publ.':>6} {'gap':>6} "
            f"{'E':>4} {'k':>2} {'shared':>6} {'width':>6} {'GFLOP/tok':>9} {'bf16 GB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r.model
        lines.append(f"{m.name:<16} {r.total / 1e9:>7.2f}B {m.published_total / 1e9:>7.2f}B {r.total_gap:>+6.1%} "
                     f"{r.active_as_published / 1e9:>6.2f}B {m.published_active / 1e9:>5.2f}B {r.active_gap:>+6.1%} "
                     f"{m.n_expert:>4} {m.top_k:>2} {m.n_shared_expert:>6} {m.expert_width:>6} "
                     f"{r.forward_flops_per_token / 1e9:>9.1f} {r.weight_bytes_bf16 / 1e9:>8.1f}")
    return "\n".join(lines)
