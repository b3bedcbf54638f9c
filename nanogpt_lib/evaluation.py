"""Evaluation: perplexity, reconstruction and continuation, always in eval mode (no dropout).

Cross-entropy over T predicted positions:   L = -1/T * sum_t log p(x_{t+1} | x_{<=t})
Perplexity:                                 PPL = exp(L)
A model that knows nothing spreads probability evenly, p = 1/V, so L = ln V and PPL = V;
a model that has memorised the text gives p close to 1, so PPL approaches 1.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .model import IGNORE_INDEX


def perplexity(loss: float) -> float:
    """exp(loss), or inf where exp overflows (a loss above ~709 nats: a diverged run)."""
    return math.exp(loss) if loss < 709.0 else math.inf


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Switch dropout off (and gradients) for the block, then restore the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class LossReport:
    loss: float  # mean cross-entropy in nats per predicted token
    perplexity: float  # exp(loss)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossReport:
    """Eval-mode cross-entropy and perplexity of targets y (B, T) given inputs x (B, T)."""
    with eval_mode(model):
        _, loss = model(x, targets=y)
    value = loss.item()
    return LossReport(loss=value, perplexity=perplexity(value))


@dataclass(frozen=True)
class Reconstruction:
    accuracy: float  # share of predicted positions where argmax == target
    correct: list[bool]  # per predicted position
    predicted_ids: list[int]  # argmax next token at each predicted position
    text: str  # the first input token followed by the predictions, decoded


def reconstruct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tokenizer) -> Reconstruction:
    """Teacher-forced reconstruction of one sequence: at each position, the most likely next token
    given the true prefix, compared with the training text. Uses the first row of x (1, T)."""
    with eval_mode(model):
        logits, _ = model(x[:1])
    pred = logits[0].argmax(dim=-1)  # (T,)
    mask = y[0] != IGNORE_INDEX  # (T,): the last position has no target
    pred, target = pred[mask], y[0][mask]
    correct = (pred == target).tolist()
    ids = [int(x[0, 0])] + pred.tolist()
    return Reconstruction(
        accuracy=sum(correct) / max(len(correct), 1),
        correct=correct,
        predicted_ids=pred.tolist(),
        text=tokenizer.decode(ids),
    )


@dataclass(frozen=True)
class Continuation:
    prefix: str
    generated: str  # only the new tokens
    ids: list[int]  # prefix and new tokens


def continue_text(
    model,
    ids: torch.Tensor,
    tokenizer,
    prefix_tokens: int = 10,
    max_new_tokens: int = 25,
    temperature: float = 0.1,
    top_k: int | None = 1,
    generator: torch.Generator | None = None,
) -> Continuation:
    """Give the model the first `prefix_tokens` tokens of ids (1, T) and let it write on.

    The seed's setting, temperature 0.1 with top_k 1, is greedy decoding: a model that memorised
    the paragraph should write it back.
    """
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or not 1 <= prefix_tokens:
        raise ValueError(f"prefix_tokens={prefix_tokens!r} must be an integer >= 1")
    prefix = ids[:1, :prefix_tokens]  # (1, P)
    with eval_mode(model):
        out = model.generate(
            prefix, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator
        )  # (1, P + N)
    new = out[0, prefix.shape[1] :].tolist()
    return Continuation(
        prefix=tokenizer.decode(prefix[0].tolist()),
        generated=tokenizer.decode(new),
        ids=out[0].tolist(),
    )


@dataclass(frozen=True)
class PositionReport:
    """Per predicted position t of one sequence: how much probability went to the true next token."""

    target_prob: list[float]  # p(x_{t+1} | x_{<=t})
    loss: list[float]  # -ln of it: the loss is their mean
    correct: list[bool]  # argmax == target (what reconstruction counts)


def position_report(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> PositionReport:
    """Eval-mode probability of each target of the first row of x (1, T), ignored positions left out."""
    with eval_mode(model):
        logits, _ = model(x[:1])
    logp = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    mask = y[0] != IGNORE_INDEX  # (T,)
    target = y[0][mask]  # (P,)
    target_logp = logp[mask].gather(1, target[:, None])[:, 0]  # (P,)
    correct = logp[mask].argmax(dim=-1) == target  # (P,)
    return PositionReport(
        target_prob=target_logp.exp().tolist(),
        loss=(-target_logp).tolist(),
        correct=correct.tolist(),
    )
