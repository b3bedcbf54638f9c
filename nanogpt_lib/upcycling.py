"""Sparse upcycling: a trained dense model becomes the starting point of a Mixture of Experts.

Instead of training an MoE from random weights, copy a trained dense model (Komatsuzaki et al., 2023,
"Sparse Upcycling", arXiv:2212.05055; Qwen1.5-MoE-A2.7B was upcycled from the dense Qwen-1.8B):

- attention, embeddings, LayerNorms and the dense blocks (with `moe_every` > 1) are the dense model's;
- each MoE block's experts come from that block's MLP, in one of two ways (`method`):

      "copy"   every expert is the whole MLP:        expert_e(x) = MLP(x)        width 4C each
      "split"  the MLP's 4C hidden units are cut into E slices of 4C / E, expert e the e-th slice,
               its output matrix scaled by E:         expert_e(x) = E * W_proj[:, e] gelu(W_fc[e] x) + b_proj

- the router is new: N(0, router_std) weights, as a router trained from scratch starts.

Function preservation. Right after upcycling the MoE computes the dense model's function when the
k weights of a token sum to 1 and nothing is dropped:

      copy:   y = sum_j w_j MLP(x) = MLP(x)                           for any router and k, if sum_j w_j = 1
      split:  y = sum_e w_e (E W_proj[:, e] h_e + b) = W_proj h + b   only if every w_e = 1 / E: all E
              slices chosen (k = E) by a router that starts at zero (router_std = 0, uniform probabilities)

So it holds for "copy" with renormalised top-k weights (k >= 2, or norm_topk_prob=True) and no capacity
limit (or one no expert reaches). It breaks with raw scores: k = 1 with its probability (y = p_1 MLP(x),
p_1 < 1) or a sigmoid router with norm_topk_prob=False; with routed_scaling_factor != 1; with capacity
drops (a dropped choice adds 0); with `expert_noise`; and for "split" with k < E or a random router. With
k < E a token sees k / E of the hidden units: the scale E would keep the output right on average if the
k experts were drawn uniformly at random, but a router picks them by its logits (a zero router picks the
same k for every token), so the output is a partial, biased sum.

A consequence: with identical experts, weights that sum to 1 and no drops, the output does not depend on
the router, so the language-model loss gives the router no gradient at first. Only the balancing and z
losses move it, and the experts, each trained on the tokens routed to it, drift apart; from then on the
router's choice matters and it learns from the loss. Noise on the copies (`expert_noise`) starts that
drift at once, at the price of exactness.

Optimizer. `upcycled_optimizer` builds the MoE's AdamW either fresh, or with the dense moments carried
over: every parameter that exists in both takes its state, each expert the state of the weights it was
copied (or sliced) from, the router none. The moments are copied as they are. An expert's gradient is
its tokens' share of the MLP's (about 1 / E of it right after a copy), so the carried v is about E^2 times
too large for it and decays towards its own scale with a time constant of 1 / (1 - beta_2) steps; until
then the copies take smaller steps than a fresh AdamW would, and nearly the same steps while the carried
m dominates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import SHAPE_FIELDS, GPTConfig
from .model import GPT
from .moe import MoE
from .training import TrainConfig, make_optimizer

METHODS = ("copy", "split")
OPTIMIZER_STATES = ("carry", "fresh")
# what upcycle decides itself: the experts' kind and width come from the dense MLP, every shape from the dense model
_FIXED = ("expert_type", "expert_hidden", "n_shared_expert", *SHAPE_FIELDS)


def upcycle_config(dense: GPTConfig, n_expert: int = 8, top_k: int = 2, method: str = "copy",
                   **options) -> GPTConfig:
    """The MoE config an upcycled `dense` config becomes: GELU experts as wide as the MLP ("copy") or a
    1 / n_expert slice of it ("split"); dropless (capacity None) unless `options` say otherwise. `options`
    are other GPTConfig fields (top-k convention, balancing weights, moe_every, ...)."""
    if not isinstance(dense, GPTConfig) or dense.n_expert != 0:
        got = f"n_expert={dense.n_expert}" if isinstance(dense, GPTConfig) else type(dense).__name__
        raise ValueError(f"upcycling starts from a dense model (n_expert=0); got {got}")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; choose one of {METHODS}")
    fixed = sorted(set(options) & set(_FIXED))
    if fixed:
        raise ValueError(f"{fixed} cannot be chosen when upcycling: every shape comes from the dense model, and the "
                         f"experts are GELU MLPs taken from its blocks (method 'copy': width 4 * n_embd; 'split': "
                         f"4 * n_embd / n_expert), without shared experts")
    if isinstance(n_expert, bool) or not isinstance(n_expert, int) or n_expert < 2:
        raise ValueError(f"n_expert={n_expert!r} is not allowed: upcycling makes an MoE of at least 2 experts")
    width = 4 * dense.n_embd
    if method == "split" and width % n_expert:
        raise ValueError(f"method 'split' cuts the MLP's {width} hidden units into n_expert={n_expert} equal slices; "
                         f"n_expert must divide {width}")
    settings = dict(capacity_factor=None, eval_capacity_factor=None)
    return replace(dense, n_expert=n_expert, top_k=top_k, expert_type="gelu", n_shared_expert=0,
                   expert_hidden=width if method == "copy" else width // n_expert, **{**settings, **options})


def upcycle(model: GPT, n_expert: int = 8, top_k: int = 2, *, method: str = "copy", router_std: float = 0.02,
            expert_noise: float = 0.0, generator: torch.Generator | None = None, **options) -> GPT:
    """A new MoE model made from the trained dense `model` (left unchanged), on its device and in its dtype.

    Every tensor but the MoE blocks' is copied; each MoE block's experts come from its MLP (`method`,
    see the module docstring), its router is drawn from N(0, router_std), and with `expert_noise` = s
    each expert weight gets Gaussian noise of s times that weight's own standard deviation (one draw
    per expert, so the copies differ from the start). `options`: further GPTConfig fields.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"upcycle expects a GPT model, got {type(model).__name__}")
    for name, value in (("router_std", router_std), ("expert_noise", expert_noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name}={value!r} is not allowed: it must be a finite number >= 0")
    config = upcycle_config(model.config, n_expert, top_k, method, **options)
    weight = model.lm_head.weight
    moe = GPT(config).to(device=weight.device, dtype=weight.dtype)  # where the dense model is, in its precision
    dense_state = model.state_dict()
    own = moe.state_dict()
    with torch.no_grad():
        for name, tensor in dense_state.items():  # everything outside the MoE layers, by its GPT-2 name
            if name in own:
                own[name].copy_(tensor)
            elif ".mlp." not in name:  # only the MoE blocks' MLPs have no tensor of the same name
                raise ValueError(f"the dense model's {name} has no place in the MoE model; upcycle a plain GPT")
        for block, dense_block in zip(moe.transformer.h, model.transformer.h, strict=True):
            if not isinstance(block.mlp, MoE):
                continue
            experts, mlp = block.mlp.experts, dense_block.mlp
            for part in ("c_fc", "c_proj"):
                for kind in ("weight", "bias"):
                    target = getattr(getattr(experts, part), kind)
                    if target is not None:
                        target.copy_(expert_tensors(getattr(getattr(mlp, part), kind), part, kind, n_expert, method))
            # drawn on the CPU from `generator`, in float64 (whose sampler gives the same numbers on every CPU;
            # float32's vectorised one does not): the same router on any device and machine
            router = block.mlp.router
            router.weight.copy_(router_std * torch.randn(router.weight.shape, generator=generator, dtype=torch.float64))
            if router.bias is not None:
                router.bias.zero_()
            if expert_noise > 0:
                for linear in experts.linears:
                    w = linear.weight  # (E, in, out)
                    scale = w[0].std()  # every expert is the same weight (copy) or a slice of it (split)
                    noise = torch.randn(w.shape, generator=generator, dtype=torch.float64)
                    w.add_((expert_noise * scale * noise.to(w.device)).to(w.dtype))
    return moe


def expert_tensors(dense: torch.Tensor, part: str, kind: str, n_expert: int, method: str,
                   scale_output: bool = True) -> torch.Tensor:
    """One tensor of the dense MLP as the E experts' stacked tensor.

        c_fc.weight   (4C, C)  ->  (E, C, H)      c_fc.bias    (4C,)  ->  (E, H)
        c_proj.weight (C, 4C)  ->  (E, H, C)      c_proj.bias  (C,)   ->  (E, C)

    nn.Linear stores (out, in), an expert's BatchedLinear (in, out): the weights are transposed.
    "copy": H = 4C, E copies. "split": H = 4C / E, expert e the hidden units e * H .. (e + 1) * H - 1,
    and (with `scale_output`, for weights but not optimizer moments) its c_proj weight times E.
    """
    if kind == "weight":
        dense = dense.t()  # (in, out)
    if method == "copy":
        return dense.unsqueeze(0).expand(n_expert, *dense.shape).clone()
    if part == "c_fc":  # slice the hidden units: the output axis of c_fc (its last axis now)
        slices = dense.reshape(*dense.shape[:-1], n_expert, -1).movedim(-2, 0)  # (E, C, H) or (E, H)
        return slices.contiguous()
    if kind == "bias":  # c_proj's bias: every expert keeps it whole (the k weights sum to 1)
        return dense.unsqueeze(0).expand(n_expert, *dense.shape).clone()
    slices = dense.reshape(n_expert, -1, dense.shape[-1])  # (4C, C) -> (E, H, C): hidden units are the rows
    return slices * n_expert if scale_output else slices.clone()


def upcycled_optimizer(dense: GPT, dense_optimizer_state: dict | None, moe: GPT, train_config: TrainConfig,
                       state: str = "carry", method: str = "copy") -> torch.optim.AdamW:
    """AdamW for the upcycled `moe`: "fresh" (no state: the first steps are AdamW's bias-corrected
    start), or "carry" (the dense optimizer's moments and step count for every weight that came
    from the dense model; the router starts fresh). `dense_optimizer_state` is the state dict of
    `make_optimizer(dense, train_config)`."""
    if state not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer state {state!r} is not known; choose one of {OPTIMIZER_STATES}")
    optimizer = make_optimizer(moe, train_config)
    if state == "fresh":
        return optimizer
    if dense_optimizer_state is None:
        raise ValueError("carrying the optimizer state needs the dense optimizer's state dict; got None "
                         "(a checkpoint saved without an optimizer? use state='fresh')")
    old = make_optimizer(dense, train_config)
    old.load_state_dict(dense_optimizer_state)
    by_name = {name: old.state[p] for name, p in dense.named_parameters() if p in old.state}
    n_expert = moe.config.n_expert
    for name, p in moe.named_parameters():
        source = name if name in by_name and by_name[name]["exp_avg"].shape == p.shape else None
        part = kind = None
        if source is None and ".mlp.experts." in name:  # transformer.h.i.mlp.experts.c_fc.weight
            part, kind = name.split(".")[-2:]
            source = name.replace(".mlp.experts.", ".mlp.")
        if source not in by_name:
            continue  # the router (and anything new): AdamW's fresh start
        found = by_name[source]
        moved = {"step": found["step"].clone()}
        for key in ("exp_avg", "exp_avg_sq"):
            value = found[key]
            if part is not None:
                value = expert_tensors(value, part, kind, n_expert, method, scale_output=False)
            moved[key] = value.to(device=p.device, dtype=p.dtype).clone()
        optimizer.state[p] = moved
    return optimizer


def upcycle_checkpoint(source: str | Path | Checkpoint, train_config: TrainConfig, n_expert: int = 8,
                       top_k: int = 2, *, method: str = "copy", optimizer_state: str = "carry",
                       router_std: float = 0.02, expert_noise: float = 0.0, seed: int = 0,
                       map_location: str | torch.device = "cpu",
                       **options) -> tuple[GPT, torch.optim.AdamW, Checkpoint]:
    """A dense checkpoint (a path, or one already loaded) upcycled: (MoE model on `map_location`, its AdamW,
    the dense checkpoint, kept on the CPU). A corpus run continues from the dense run's step with
    `train_corpus(moe, ..., optimizer=..., resume=checkpoint)`; the learning-rate schedule is the dense
    run's, carried on (no new warm-up). `seed` draws the router and the noise."""
    ck = source if isinstance(source, Checkpoint) else load_checkpoint(source, map_location="cpu")
    name = "the given checkpoint" if isinstance(source, Checkpoint) else f"checkpoint {str(source)!r}"
    if ck.config.n_expert != 0:
        raise CheckpointError(f"{name} holds an MoE model (n_expert={ck.config.n_expert}); "
                              f"--upcycle-from needs a dense one (resume an MoE run with --resume)")
    generator = torch.Generator().manual_seed(seed)
    moe = upcycle(ck.model, n_expert, top_k, method=method, router_std=router_std, expert_noise=expert_noise,
                  generator=generator, **options).to(map_location)
    optimizer = upcycled_optimizer(ck.model, ck.optimizer_state, moe, train_config, optimizer_state, method)
    return moe, optimizer, ck


@torch.no_grad()
def expert_spread(moe: GPT) -> list[float]:
    """Per MoE layer, how far its experts have moved apart: the mean over expert pairs of
    ||W_i - W_j|| / ||W_mean||, over both matrices of each expert. 0 right after a "copy" upcycling."""
    spread = []
    for block in moe.transformer.h:
        if not isinstance(block.mlp, MoE):
            continue
        flat = torch.cat([lin.weight.flatten(1) for lin in block.mlp.experts.linears], dim=1)  # (E, weights)
        # (E, E); the exact formula, never the matrix-product shortcut that leaves noise between equal rows
        exact = "donot_use_mm_for_euclid_dist"
        pairs = torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0), compute_mode=exact).squeeze(0)
        E = flat.shape[0]
        mean_pair = pairs.sum() / (E * (E - 1))
        spread.append(float(mean_pair / flat.mean(dim=0).norm()))
    return spread


@dataclass(frozen=True)
class FunctionGap:
    max_logit: float  # the largest |logit difference| over every position and vocabulary entry
    loss: float  # mean cross-entropy of the first model minus the second's (nats per token)


@torch.no_grad()
def function_gap(model: GPT, reference: GPT, x: torch.Tensor, y: torch.Tensor, train: bool = False) -> FunctionGap:
    """How far `model` computes from `reference` on windows x (W, T) with targets y: the largest logit
    difference and the loss difference. `train=True` compares in training mode (training capacity and
    router noise apply; use dropout 0 there); both models are put back in the mode they were in."""
    modes = (model.training, reference.training)
    model.train(train)
    reference.train(train)
    try:
        logits, loss = model(x, targets=y)
        ref_logits, ref_loss = reference(x, targets=y)
    finally:
        model.train(modes[0])
        reference.train(modes[1])
    return FunctionGap(max_logit=float((logits - ref_logits).abs().max()), loss=float(loss - ref_loss))
