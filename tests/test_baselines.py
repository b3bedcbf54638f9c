"""Count baselines (nanogpt_lib/baselines.py) against a brute-force computation on a tiny vocabulary."""

import math
from collections import Counter

import numpy as np
import pytest

from nanogpt_lib.baselines import LAMBDAS, BaselineLosses, count_baselines


def brute_unigram(train, vocab_size):
    counts = Counter(int(t) for t in train)
    return {b: (counts[b] + 1) / (len(train) + vocab_size) for b in range(vocab_size)}


def brute_bigram_loss(train, pairs, vocab_size, lam):
    """Mean -log p(b | a) over the (a, b) pairs, p interpolated with the add-one unigram; the unigram alone
    when `a` never starts a pair in `train`."""
    p_uni = brute_unigram(train, vocab_size)
    first = Counter(int(a) for a in train[:-1])
    pair = Counter(zip((int(a) for a in train[:-1]), (int(b) for b in train[1:]), strict=True))
    total = 0.0
    for a, b in pairs:
        if first[a]:
            p = lam * pair[(a, b)] / first[a] + (1 - lam) * p_uni[b]
        else:
            p = p_uni[b]
        total -= math.log(p)
    return total / len(pairs)


def brute_lambda(train, vocab_size, held_out):
    cut = int(len(train) * (1 - held_out))
    fit, tail = train[:cut], train[cut:]
    losses = [brute_bigram_loss(fit, list(zip(tail[:-1], tail[1:], strict=True)), vocab_size, lam) for lam in LAMBDAS]
    return LAMBDAS[losses.index(min(losses))], losses


def markov(n, vocab_size, noise, seed):
    """A cycle 0 -> 1 -> ... -> V-2 -> 0 with probability 1 - noise, else a uniform token (V-1 only there)."""
    rng = np.random.default_rng(seed)
    tokens = [0]
    for _ in range(n - 1):
        tokens.append(int(rng.integers(vocab_size)) if rng.random() < noise else (tokens[-1] + 1) % (vocab_size - 1))
    return np.array(tokens)


def test_the_losses_equal_a_brute_force_count():
    V = 6
    train = np.array([0, 1, 2, 1, 0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 0, 1, 2, 0, 1, 2, 1, 0, 3])  # 4, 5 never; 3 last only
    inputs = np.array([[0, 1, 2, 3], [4, 2, 1, 0]])  # 3 and 4 never start a pair: the unigram alone
    targets = np.array([[1, 2, 5, 0], [0, 1, 0, 4]])  # 5 and 4 never seen: add-one
    result = count_baselines(train, inputs, targets, V, held_out=0.25)
    assert isinstance(result, BaselineLosses) and result.bigram_lambda in LAMBDAS
    p_uni = brute_unigram(train, V)
    assert p_uni[5] == 1 / (23 + 6) and p_uni[0] == 8 / 29
    unigram = -sum(math.log(p_uni[int(b)]) for b in targets.ravel()) / 8
    assert result.unigram == pytest.approx(unigram, rel=1e-12)
    pairs = list(zip(inputs.ravel().tolist(), targets.ravel().tolist(), strict=True))
    assert result.bigram == pytest.approx(brute_bigram_loss(train, pairs, V, result.bigram_lambda), rel=1e-12)
    assert result.bigram_lambda == brute_lambda(train, V, 0.25)[0]


def test_a_one_dimensional_stream_and_windows_give_the_same_losses():
    train = markov(400, 7, 0.3, seed=0)
    val = markov(65, 7, 0.3, seed=1)
    flat = count_baselines(train, val[:-1], val[1:], 7)
    windows = count_baselines(train, val[:-1].reshape(8, 8), val[1:].reshape(8, 8), 7)
    assert flat == windows


@pytest.mark.parametrize("noise, held_out", [(0.05, 0.05), (0.5, 0.1), (0.9, 0.2), (1.0, 0.05)])
def test_lambda_is_the_grid_value_best_on_the_tail_of_train(noise, held_out):
    V = 8
    train = markov(3000, V, noise, seed=2)
    val = markov(201, V, noise, seed=3)
    result = count_baselines(train, val[:-1], val[1:], V, held_out=held_out)
    best, losses = brute_lambda(train, V, held_out)
    assert result.bigram_lambda == best
    assert losses[LAMBDAS.index(best)] == min(losses) < max(losses)
    # then refitted on all of train and scored with that lambda
    pairs = list(zip(val[:-1].tolist(), val[1:].tolist(), strict=True))
    assert result.bigram == pytest.approx(brute_bigram_loss(train, pairs, V, best), rel=1e-12)


def test_lambda_follows_how_much_the_previous_token_tells():
    V = 8
    nearly_deterministic = count_baselines(markov(3000, V, 0.02, 4), np.array([0]), np.array([1]), V)
    random = count_baselines(markov(3000, 50, 1.0, 4), np.array([0]), np.array([1]), 50)  # sparse pair counts
    assert nearly_deterministic.bigram_lambda == 0.95 and random.bigram_lambda <= 0.2
    assert 0.05 < count_baselines(markov(3000, V, 0.8, 0), np.array([0]), np.array([1]), V).bigram_lambda < 0.95


def test_lambda_is_chosen_on_train_not_on_the_scored_targets():
    V = 8
    train = markov(2000, V, 0.3, seed=5)
    predictable = markov(101, V, 0.0, seed=6)
    noisy = np.random.default_rng(7).integers(0, V, 101)
    a = count_baselines(train, predictable[:-1], predictable[1:], V)
    b = count_baselines(train, noisy[:-1], noisy[1:], V)
    assert a.bigram_lambda == b.bigram_lambda and a.bigram < a.unigram and b.bigram > a.bigram


def test_the_bigram_beats_the_unigram_on_a_markov_chain():
    V = 8
    val = markov(301, V, 0.1, 9)
    result = count_baselines(markov(3000, V, 0.1, 8), val[:-1], val[1:], V)
    assert result.bigram < 0.6 * result.unigram and result.unigram == pytest.approx(math.log(V), rel=0.1)


@pytest.mark.parametrize("inputs, targets", [
    (np.zeros(5, dtype=int), np.zeros(4, dtype=int)),
    (np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int)),  # same size, other pairs: refused too
])
def test_inputs_and_targets_of_other_shapes_are_refused(inputs, targets):
    with pytest.raises(ValueError, match=r"inputs \(.*\) and targets \(.*\) must have the same shape"):
        count_baselines(np.arange(50) % 5, inputs, targets, 5)


@pytest.mark.parametrize("held_out", [0, 1, -0.1, 1.5])
def test_a_bad_held_out_share_is_refused(held_out):
    with pytest.raises(ValueError, match=rf"held_out={held_out!r} is not allowed: it must be in \(0, 1\)"):
        count_baselines(np.arange(50) % 5, np.zeros(3, dtype=int), np.zeros(3, dtype=int), 5, held_out=held_out)


@pytest.mark.parametrize("n, held_out", [(10, 0.05), (3, 0.5), (100, 0.999)])
def test_a_train_stream_too_short_to_hold_out_is_refused(n, held_out):
    """A held-out tail without a single pair (or nothing left to fit) cannot choose lambda."""
    with pytest.raises(ValueError, match=r"held out"):
        count_baselines(np.arange(n) % 5, np.zeros(3, dtype=int), np.zeros(3, dtype=int), 5, held_out=held_out)
