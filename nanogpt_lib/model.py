"""GPT-2 as a small, readable PyTorch module.

Module and parameter names follow GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...),
so a state dict maps one to one onto Hugging Face's `GPT2LMHeadModel` (see `nanogpt_lib.hf`).

Shapes use B = batch, T = sequence length, C = n_embd, H = n_head, D = C // H, V = vocab_size.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .kv_cache import KVCache
from .moe import BatchedLinear, MoE, MoELayerOutput, MoEOutput

IGNORE_INDEX = -1  # target value that the loss skips (the last position of the shifted targets)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # split the channels into heads: (B, T, C) -> (B, H, T, D)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        mask, causal = None, True
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, H, past + T, D): the cached tokens, then these
            if past > 0:  # SDPA's is_causal aligns the mask top-left; these queries sit bottom-right
                causal = False
                if T > 1:  # query i (position past + i) sees keys 0 .. past + i
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        # softmax(q k^T / sqrt(D) + causal mask) v, fused by PyTorch
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU (tanh form, as GPT-2) -> C."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)).

    In an MoE block `mlp` is a Mixture of Experts (see `moe.py`); its losses and statistics are
    appended to `moe_out` when the caller passes a list.
    """

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MoE(config) if config.is_moe_layer(layer) else MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, moe_out: list | None = None,
        balance_counts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # (B, T, C)
        if isinstance(self.mlp, MoE):  # (B, T, C), the layer's losses
            y, out = self.mlp(self.ln_2(x), collect=moe_out is not None, balance_counts=balance_counts)
            if moe_out is not None:
                moe_out.append(out)
            return x + y
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reuses the token embedding matrix.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections start smaller, std 0.02 / sqrt(2 * n_layer), so the
        # residual stream's variance does not grow with depth (two additions per block).
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "down_proj.weight")):  # SwiGLU experts call theirs down_proj
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, BatchedLinear):  # each expert starts like a dense Linear
            module.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, with_moe: bool = False,
        balance_counts: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor | None, MoEOutput]:
        """Logits for every position, (B, T, V), and the mean cross-entropy when targets are given.

        Targets equal to -1 are ignored by the loss (the seed's shifted last position).
        Any integer dtype is accepted (uint16 token files included) and used as int64.
        The loss is cross-entropy only. With `with_moe=True` a third value, an `MoEOutput`, carries
        the MoE layers' auxiliary losses (and `penalty`, what training adds to the loss) and their
        routing statistics; a dense model returns zeros there. `balance_counts`, one (E,) tensor per MoE
        layer, replaces the batch's own expert counts in the load-balancing loss (the global batch's
        counts: `training.global_balance_counts`).
        """
        idx = self._checked_idx(idx)
        if idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence length T={idx.shape[1]} exceeds block_size={self.config.block_size}; "
                f"pass at most block_size tokens (e.g. idx[:, -{self.config.block_size}:])"
            )
        if targets is not None:
            targets = self._checked_targets(targets, idx.shape)
        moe_out: list[MoELayerOutput] | None = [] if with_moe else None  # losses and stats only when asked
        logits = self._logits(idx, moe_out=moe_out, balance_counts=balance_counts)  # (B, T, V)
        loss = None
        if targets is not None:
            B, T, V = logits.shape
            loss = F.cross_entropy(logits.view(B * T, V), targets.reshape(B * T), ignore_index=IGNORE_INDEX)
        if with_moe:
            return logits, loss, MoEOutput.collect(moe_out, self.config, logits.device)
        return logits, loss

    def _logits(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False, moe_out: list | None = None,
        balance_counts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The network itself, on ids already checked: (B, T) -> (B, T, V). With a cache, idx holds
        only the new tokens, placed after the cache.length tokens already in it. With `last_only`,
        only the last position goes through ln_f and lm_head: (B, 1, V), all that generation needs."""
        T = idx.shape[1]
        start = 0 if cache is None else cache.length
        pos_emb = self.transformer.wpe.weight[start : start + T]  # (T, C): rows start .. start+T-1
        x = self.transformer.wte(idx) + pos_emb  # (B, T, C) + (T, C)
        x = self.transformer.drop(x)
        counts = iter(balance_counts or ())  # one per MoE layer, in order
        for i, block in enumerate(self.transformer.h):
            mine = next(counts) if balance_counts is not None and isinstance(block.mlp, MoE) else None
            x = block(x, cache, i, moe_out, mine)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, V)

    def _checked_idx(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or not _is_integer(idx):
            got = (
                f"shape {tuple(idx.shape)} dtype {idx.dtype}"
                if isinstance(idx, torch.Tensor)
                else type(idx).__name__
            )
            raise ValueError(f"idx must be a 2-D integer tensor of token ids (B, T); got {got}")
        if idx.numel() == 0:
            raise ValueError(f"idx is empty (shape {tuple(idx.shape)}); it needs at least one token")
        idx = idx.long()
        lo, hi = (int(v) for v in torch.aminmax(idx))  # one device sync for both bounds
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {self.config.vocab_size}); "
                f"was idx made by a tokenizer with a larger vocabulary than vocab_size={self.config.vocab_size}?"
            )
        return idx

    def _checked_targets(self, targets: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor) or not _is_integer(targets):
            raise ValueError("targets must be an integer tensor of token ids (or -1 to ignore)")
        if targets.shape != shape:
            raise ValueError(
                f"targets have shape {tuple(targets.shape)} but idx has shape {tuple(shape)}; "
                f"they must match (one target per input position)"
            )
        targets = targets.long()
        lo, hi = (int(v) for v in torch.aminmax(targets))
        if lo < IGNORE_INDEX or hi >= self.config.vocab_size:
            raise ValueError(
                f"target {lo if lo < IGNORE_INDEX else hi} is not allowed: targets must be ids in "
                f"[0, {self.config.vocab_size}) or {IGNORE_INDEX} (ignored by the loss)"
            )
        return targets

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to idx (B, T) and return (B, T + max_new_tokens).

        The context is cropped to the last block_size tokens. Logits are divided by `temperature`
        (> 0) and, with `top_k`, restricted to the k most likely tokens (k is clamped to the
        vocabulary); `top_k=1` is greedy decoding. Dropout follows the module's mode: call
        `model.eval()` first for deterministic greedy output. `use_cache` keeps the keys and values
        of past tokens (see `kv_cache.py`): the same tokens, less work; False recomputes everything.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        max_new_tokens = int(max_new_tokens)
        device = self.lm_head.weight.device
        if isinstance(idx, torch.Tensor) and idx.device != device:
            raise ValueError(f"idx is on {idx.device} but the model is on {device}; move it there first "
                             f"(idx.to({str(device)!r}))")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            0 < temperature < math.inf
        ):
            raise ValueError(
                f"temperature={temperature!r} is not allowed: it must be a finite number > 0 "
                f"(use top_k=1 for greedy decoding)"
            )
        temperature = float(temperature)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} is not allowed: it must be None or an integer >= 1")
            top_k = min(int(top_k), self.config.vocab_size)
        idx = self._checked_idx(idx)  # once: generated ids are in range by construction
        cache = None
        if use_cache:
            c = self.config
            cache = KVCache(c.n_layer, idx.shape[0], c.n_head, c.block_size, c.head_size, idx.device,
                            self.lm_head.weight.dtype)
        B, T = idx.shape
        out = torch.empty(B, T + max_new_tokens, dtype=idx.dtype, device=idx.device)  # (B, T + N)
        out[:, :T] = idx
        logits = self._next_logits(idx, cache, new=None)  # (B, V)
        for t in range(T, T + max_new_tokens):
            out[:, t : t + 1] = _pick(logits, temperature, top_k, generator)  # (B, 1)
            if t + 1 < T + max_new_tokens:
                logits = self._next_logits(out[:, : t + 1], cache, new=out[:, t : t + 1])
        return out

    def _next_logits(self, idx: torch.Tensor, cache: KVCache | None, new: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) of the token that follows idx (B, T), the context cropped to block_size.

        With a cache, only `new` (the tokens appended since the last call) goes through the model,
        unless the window is full: then the positions slide and the cache is refilled.
        """
        if cache is not None and new is not None and cache.length + new.shape[1] <= self.config.block_size:
            return self._logits(new, cache, last_only=True)[:, -1, :]  # only the new tokens go through the model
        if cache is not None:
            cache.reset()
        window = idx[:, -self.config.block_size :]  # (B, <=block_size)
        return self._logits(window, cache, last_only=True)[:, -1, :]

    # -------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied wte/lm_head matrix counted once).

        With `non_embedding=True`, the token and position embeddings are left out (Kaplan et al.'s
        N, the count that scaling laws use).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def num_active_params(self, non_embedding: bool = False) -> int:
        """Parameters one token actually uses: in each MoE layer only k of the E experts.

        Equals `num_params` for a dense model. Compute per token follows the active count; memory
        follows the total one.
        """
        n = self.num_params(non_embedding)
        for block in self.transformer.h:
            if isinstance(block.mlp, MoE):  # the layer itself says what a token uses of it
                n -= sum(p.numel() for p in block.mlp.parameters()) - block.mlp.active_params()
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> int:
        """Estimated FLOPs per token (multiply and add counted as 2), as in the PaLM appendix.

        Forward: 2 x (weights used in matrix products, lm_head and routers included, and of each
        MoE layer only the k experts a token visits and the shared experts) plus attention's q k^T and (att) v,
        2 x 2 x T x C per layer (no discount for the causal mask). Training (forward + backward)
        costs three forward passes.
        """
        T = self.config.block_size if seq_len is None else seq_len
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        for m in self.modules():
            if isinstance(m, MoE):  # the k routed experts a token visits, and the shared ones
                matmul_weights += m.matmul_weights_per_token()
        forward = 2 * matmul_weights + 4 * self.config.n_layer * T * self.config.n_embd
        return 3 * forward if training else forward


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """The next token (B, 1) from last-position logits (B, V): argmax for top_k=1, else a sample."""
    if top_k == 1:  # greedy: temperature does not change the order of the logits
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    # subtract the max before dividing, so a tiny temperature gives 0 and -large, never inf - inf
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k).values[:, -1:]  # (B, 1): k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


def _is_integer(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool
