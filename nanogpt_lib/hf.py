"""Conversion between our `GPT` and Hugging Face's `GPT2LMHeadModel`.

Both use the same parameter names. The one difference is storage: GPT-2's original code (and
`transformers`' `Conv1D`) keeps a projection's weight as (in_features, out_features), while
`nn.Linear` keeps (out_features, in_features), so those four matrices are transposed.
GPT-2 always has biases; a `bias=False` model is exported with zero biases, and a Hugging Face
model can only become a `bias=False` model if all its biases are zero.
"""

from __future__ import annotations

import torch

from .config import GPTConfig
from .model import GPT

# Weights that transformers stores as Conv1D (in, out) instead of Linear (out, in).
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def to_hf(model: GPT):
    """A `transformers.GPT2LMHeadModel` with the same weights (and the same logits) as `model`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    if cfg.n_expert > 0:
        raise ValueError(f"to_hf: this model has Mixture-of-Experts layers (n_expert={cfg.n_expert}, blocks "
                         f"{cfg.moe_layers}); GPT2LMHeadModel has dense MLPs only, so only n_expert=0 converts")
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=None,  # 4 * n_embd
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=True,
    )
    hf_model = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    theirs = dict(hf_model.named_parameters())  # parameters only: no attention-mask buffers
    with torch.no_grad():
        for name, target in theirs.items():
            if name in ours:
                value = ours[name]
                target.copy_(value.t() if name.endswith(_CONV1D_SUFFIXES) else value)
            elif name.endswith(".bias"):
                target.zero_()  # our bias=False model: GPT-2's biases become zeros
            else:
                raise KeyError(f"transformers' GPT-2 has a parameter {name!r} that our GPT lacks")
    hf_model.train(model.training)
    return hf_model


def from_hf(hf_model, bias: bool = True) -> GPT:
    """Our `GPT` with the weights of a `transformers.GPT2LMHeadModel`.

    `bias=False` drops GPT-2's biases; that is only exact when they are all zero, so a non-zero
    bias raises `ValueError`.
    """
    c = hf_model.config
    if c.activation_function not in _TANH_GELUS:
        raise ValueError(
            f"activation_function={c.activation_function!r} is not supported: our MLP uses the tanh "
            f"GELU, i.e. one of {_TANH_GELUS}"
        )
    if c.n_inner not in (None, 4 * c.n_embd):
        raise ValueError(f"n_inner={c.n_inner} is not supported: our MLP width is 4 * n_embd")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12:
        raise ValueError(f"layer_norm_epsilon={c.layer_norm_epsilon} is not supported: ours is 1e-5")
    # attention variants our block does not implement (each changes the logits)
    for flag, ours in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("reorder_and_upcast_attn", False)):
        if getattr(c, flag, ours) != ours:
            raise ValueError(f"{flag}={getattr(c, flag)!r} is not supported: ours is {ours}")
    if not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight):
        raise ValueError(
            "lm_head.weight differs from transformer.wte.weight (tie_word_embeddings=False): "
            "our GPT always ties the output projection to the token embedding"
        )
    dropouts = {"resid_pdrop": c.resid_pdrop, "embd_pdrop": c.embd_pdrop, "attn_pdrop": c.attn_pdrop}
    if len(set(dropouts.values())) != 1:
        raise ValueError(f"dropouts differ ({dropouts}): our GPTConfig has one dropout for all three")
    config = GPTConfig(
        block_size=c.n_positions,
        vocab_size=c.vocab_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=float(c.resid_pdrop),
        bias=bias,
    )
    model = GPT(config)
    theirs = hf_model.state_dict()
    state = {}
    for name in model.state_dict():
        value = theirs[name]
        state[name] = value.t() if name.endswith(_CONV1D_SUFFIXES) else value
    if not bias:
        for name, value in hf_model.named_parameters():
            if name.endswith(".bias") and torch.count_nonzero(value):
                raise ValueError(
                    f"{name} has non-zero values, so this model cannot become a bias=False GPT; "
                    f"convert it with bias=True"
                )
    model.load_state_dict(state)
    model.train(hf_model.training)
    return model
