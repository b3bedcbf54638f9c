"""Count-based baselines: what a model must beat before its loss means anything.

Both are fitted on the training tokens and scored on the same targets as the models (nats per token):

    unigram:  p(b)     = (count(b) + 1) / (N + V)                       (add-one smoothing)
    bigram:   p(b | a) = lam * count(a, b) / count(a) + (1 - lam) * p(b) (interpolated with the unigram;
                                                                        p(b) alone when a was never seen)

`lam` is chosen on held-out training tokens (the last `held_out` share of the training stream,
not the validation split), from a grid, then the counts are refitted on all training tokens.
A bigram sees one token of context; the Transformer sees up to block_size, so the gap between
them is what context (and capacity) buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAMBDAS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


@dataclass(frozen=True)
class BaselineLosses:
    unigram: float  # nats per token
    bigram: float
    bigram_lambda: float  # the interpolation weight chosen on held-out training tokens


def _counts(tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokens, dtype=np.int64)
    unigram = np.bincount(tokens, minlength=vocab_size).astype(np.float64)  # (V,)
    pairs = np.bincount(tokens[:-1] * vocab_size + tokens[1:], minlength=vocab_size * vocab_size)
    return unigram, pairs.reshape(vocab_size, vocab_size).astype(np.float64)  # (V, V): [a, b]


def _losses(unigram: np.ndarray, pairs: np.ndarray, inputs: np.ndarray, targets: np.ndarray,
            lambdas: tuple[float, ...]) -> tuple[float, list[float]]:
    vocab_size = len(unigram)
    p_uni = (unigram + 1) / (unigram.sum() + vocab_size)  # (V,)
    uni_loss = float(-np.log(p_uni[targets]).mean())
    row = pairs.sum(axis=1)  # (V,) count(a) as a first token
    seen = row[inputs] > 0  # (M,)
    p_pair = np.where(seen, pairs[inputs, targets] / np.maximum(row[inputs], 1), 0.0)  # (M,)
    bigram = []
    for lam in lambdas:
        p = np.where(seen, lam * p_pair + (1 - lam) * p_uni[targets], p_uni[targets])
        bigram.append(float(-np.log(p).mean()))
    return uni_loss, bigram


def count_baselines(train: np.ndarray, inputs: np.ndarray, targets: np.ndarray, vocab_size: int,
                    held_out: float = 0.05) -> BaselineLosses:
    """Unigram and interpolated-bigram losses on (inputs, targets) pairs of the same shape (any shape:
    a model's evaluation windows), fitted on the `train` token stream."""
    inputs = np.asarray(inputs, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if inputs.shape != targets.shape:  # before flattening: (2, 3) and (3, 2) would pair the wrong tokens
        raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} must have the same shape")
    inputs, targets = inputs.ravel(), targets.ravel()
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out!r} is not allowed: it must be in (0, 1)")
    train = np.asarray(train, dtype=np.int64)
    cut = int(len(train) * (1 - held_out))
    if cut < 2 or len(train) - cut < 2:  # else lambda would be chosen from no pairs (a mean of nothing)
        raise ValueError(f"{len(train)} training tokens with held_out={held_out} leave {cut} to fit and "
                         f"{len(train) - cut} held out: each side needs at least 2 tokens (one pair)")
    unigram, pairs = _counts(train[:cut], vocab_size)
    _, tuning = _losses(unigram, pairs, train[cut:-1], train[cut + 1 :], LAMBDAS)
    lam = LAMBDAS[int(np.argmin(tuning))]
    unigram, pairs = _counts(train, vocab_size)
    uni_loss, (bigram_loss,) = _losses(unigram, pairs, inputs, targets, (lam,))
    return BaselineLosses(unigram=uni_loss, bigram=bigram_loss, bigram_lambda=lam)
