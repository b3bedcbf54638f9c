"""Expert specialisation: token classes, first choices of a routed model, counts, enrichment, mutual
information, token purity and genre labels (nanogpt_lib/specialisation.py)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.moe import MoE
from nanogpt_lib.specialisation import (
    CLASSES,
    FUNCTION_WORDS,
    Specialisation,
    count_by_label,
    first_choices,
    genre_labels,
    token_class,
    token_purity,
    vocabulary_classes,
)


# ------------------------------------------------------------------ token classes
@pytest.mark.parametrize("text, expected", [
    (" de", "function word"),
    (" é", "function word"),
    (" não", "function word"),
    (" Capitu", "capitalised"),
    (" É", "capitalised"),  # capitalised wins over function word (a sentence's first word)
    (" A", "capitalised"),
    ("ava", "verb ending"),
    ("amava", "verb ending"),
    ("ando", "verb ending"),
    ("ção", "other word piece"),
    ("mente", "other word piece"),
    ("Casa", "other word piece"),  # no leading space: not a word start, so not "capitalised"
    ("de", "other word piece"),  # likewise not a function word
    (" casa", "other word start"),
    (" falava", "other word start"),  # verb endings are word pieces only
    (",", "punctuation"),
    ("..!", "punctuation"),
    (" —", "punctuation"),
    ("…", "punctuation"),
    (" 1839", "number"),
    ("3", "number"),
    ("ava1", "number"),  # any digit makes a number
    ("\n", "whitespace"),
    (" ", "whitespace"),
    ("\n\n  ", "whitespace"),
    ("", "whitespace"),
])
def test_token_class_of_portuguese_examples(text, expected):
    assert token_class(text) == expected


def test_classes_and_function_words():
    assert len(CLASSES) == 8 and len(set(CLASSES)) == 8
    assert {"de", "que", "não", "a", "o", "é", "se"} <= FUNCTION_WORDS
    assert all(w == w.lower() and " " not in w for w in FUNCTION_WORDS)


def test_vocabulary_classes_of_the_bundled_tokenizer(bundled_tokenizer):
    classes = vocabulary_classes(bundled_tokenizer)
    assert classes.shape == (4096,) == (len(bundled_tokenizer),) and classes.dtype == np.int64
    assert (np.bincount(classes, minlength=len(CLASSES)) > 0).all()  # every class present
    assert classes.min() >= 0 and classes.max() < len(CLASSES)
    # the docstring's rules hold over the whole vocabulary
    special = set(bundled_tokenizer.all_special_ids)
    assert special and all(CLASSES[classes[i]] == "whitespace" for i in special)  # end of text separates works
    for i in range(len(bundled_tokenizer)):
        if i in special:
            continue
        text, name = bundled_tokenizer.decode([i]), CLASSES[classes[i]]
        assert name == token_class(text)
        stripped = text.strip()
        if name == "whitespace":
            assert not stripped
        elif name == "punctuation":
            assert stripped and not any(ch.isalnum() for ch in stripped)
        elif name == "number":
            assert any(ch.isdigit() for ch in stripped)
        elif name == "capitalised":
            assert text[0].isspace() and stripped[0].isupper()
        elif name == "function word":
            assert text[0].isspace() and stripped.lower() in FUNCTION_WORDS
        elif name == "verb ending":
            assert not text[0].isspace() and stripped.isalpha()
        elif name == "other word start":
            assert text[0].isspace() and not any(ch.isdigit() for ch in stripped)
        else:
            assert not text[0].isspace()
    # a sentence through the tokenizer: every class once
    ids = bundled_tokenizer(" falava de Capitu, em 1839.\n", add_special_tokens=False)["input_ids"]
    pieces = [bundled_tokenizer.decode([i]) for i in ids]
    assert pieces == [" fal", "ava", " de", " Cap", "itu", ",", " em", " 18", "3", "9", ".", "\n"]
    assert [CLASSES[classes[i]] for i in ids] == [
        "other word start", "verb ending", "function word", "capitalised", "other word piece", "punctuation",
        "function word", "number", "number", "number", "punctuation", "whitespace"]


# ------------------------------------------------------------------ first choices
MOE = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, n_expert=4, top_k=2, dropout=0.0)


@pytest.fixture
def moe_model():
    torch.manual_seed(0)
    model = GPT(MOE)
    with torch.no_grad():  # spread the router's choices so that a wrong index cannot pass by chance
        for m in model.modules():
            if isinstance(m, MoE):
                m.router.weight.normal_(0, 1.0)
    return model


@pytest.fixture
def windows():
    return torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(1))


def _by_hand(model, x):
    """Per MoE layer, argmax of the router's logits on the hidden state the layer receives (eval mode)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [m.register_forward_pre_hook(lambda mod, args, i=i: inputs[i].append(args[0].clone()))
               for i, m in enumerate(layers)]
    model.eval()
    try:
        with torch.no_grad():
            logits, _ = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train()
    found = []
    for m, (h,) in zip(layers, inputs, strict=True):
        flat = h.reshape(-1, h.shape[-1])  # (W*T, C), rows in window-major order
        found.append(m.router(flat).argmax(dim=-1))
        # the route's first choice is that argmax (softmax router, no bias)
        assert torch.equal(m.route(flat).experts[:, 0], found[-1])
    return found, logits


def test_first_choices_are_the_top1_of_each_moe_layer(moe_model, windows):
    expected, logits = _by_hand(moe_model, windows)
    moe_model.train()
    outputs = []
    probe = moe_model.register_forward_hook(lambda mod, args, out: outputs.append(out[0].clone()))
    try:
        choices = first_choices(moe_model, windows, batch_size=2)
    finally:
        probe.remove()
    assert len(choices) == 2  # one per MoE layer
    for got, want in zip(choices, expected, strict=True):
        assert got.shape == (5 * 16,) and got.dtype == torch.int64
        assert torch.equal(got, want)
        assert got.min() >= 0 and got.max() < 4
        assert len(set(got.tolist())) > 1  # not a degenerate router
    # the model's own forward ran unchanged (batches of 2, 2 and 1 windows)
    assert [o.shape[0] for o in outputs] == [2, 2, 1]
    assert torch.allclose(torch.cat(outputs), logits, atol=1e-6)
    # hooks removed, training mode restored everywhere
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in moe_model.modules())
    assert moe_model.training and all(m.training for m in moe_model.modules())
    assert torch.equal(moe_model.eval()(windows)[0], logits)


def test_first_choices_do_not_depend_on_the_batch_size_and_keep_eval_mode(moe_model, windows):
    moe_model.eval()
    results = [first_choices(moe_model, windows, batch_size=b) for b in (1, 3, 16)]
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
    assert not moe_model.training  # an eval-mode model stays in eval mode


def test_first_choices_ignore_training_noise_and_uint16_windows():
    torch.manual_seed(0)
    noisy = GPT(replace(MOE, router_noise=5.0))
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    a = first_choices(noisy, x)
    b = first_choices(noisy, x.to(torch.uint16))  # token files hold uint16
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # eval mode: no noise
    assert noisy.training


def test_first_choices_of_a_dense_model_is_an_error(tiny_model, windows):
    with pytest.raises(ValueError, match="no MoE layer"):
        first_choices(tiny_model, windows)


def test_first_choices_only_in_moe_blocks():
    torch.manual_seed(0)
    model = GPT(replace(MOE, n_layer=4, moe_every=2))
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    choices = first_choices(model, x)
    assert len(choices) == sum(isinstance(m, MoE) for m in model.modules()) == 2
    assert all(c.shape == (16,) for c in choices)


# ------------------------------------------------------------------ counts and their reading
def test_count_by_label_matches_add_at():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    layers = [torch.from_numpy(rng.integers(0, 5, size=200)) for _ in range(2)]
    spec = count_by_label(layers, labels, ["a", "b", "c"], n_expert=5)
    assert spec.labels == ("a", "b", "c") and len(spec.counts) == 2
    for experts, counts in zip(layers, spec.counts, strict=True):
        want = np.zeros((3, 5), dtype=np.int64)
        np.add.at(want, (labels, experts.numpy()), 1)
        assert counts.shape == (3, 5) and np.array_equal(counts, want)
        assert counts.sum() == 200
    # labels as (W, T) are flattened like the choices; an unused label and expert keep their zero row/column
    spec = count_by_label([torch.tensor([0, 0, 2, 2])], np.array([[0, 0], [2, 0]]), ["x", "y", "z"], n_expert=4)
    assert spec.counts[0].tolist() == [[2, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


def test_count_by_label_needs_one_label_per_token():
    with pytest.raises(ValueError, match="5 routed tokens but 4 labels"):
        count_by_label([torch.zeros(5, dtype=torch.int64)], np.zeros(4), ["a"], n_expert=2)


def _spec(*layers):
    return Specialisation(tuple(f"l{i}" for i in range(len(layers[0]))), [np.asarray(c) for c in layers])


def test_enrichment_is_one_for_independent_counts_and_hand_values_otherwise():
    independent = np.outer([1, 2, 3], [2, 1, 1, 4])  # n[c, e] = a_c * b_e
    np.testing.assert_allclose(_spec(independent).enrichment(0), np.ones((3, 4)))
    # P(e0) = 1/2, P(e0 | l0) = 3/4: enrichment 1.5
    np.testing.assert_allclose(_spec([[3, 1], [1, 3]]).enrichment(0), [[1.5, 0.5], [0.5, 1.5]])
    # P(e) = (5/10, 3/10, 2/10); P(e | l0) = (4/5, 1/5, 0); P(e | l1) = (1/5, 2/5, 2/5)
    np.testing.assert_allclose(_spec([[4, 1, 0], [1, 2, 2]]).enrichment(0),
                               [[1.6, 2 / 3, 0.0], [0.4, 4 / 3, 2.0]])
    with_empty = _spec([[3, 1], [0, 0], [1, 3]]).enrichment(0)
    assert np.isnan(with_empty[1]).all()
    np.testing.assert_allclose(with_empty[[0, 2]], [[1.5, 0.5], [0.5, 1.5]])
    # each layer read on its own
    two = _spec([[3, 1], [1, 3]], independent[:2, :2])
    np.testing.assert_allclose(two.enrichment(1), np.ones((2, 2)))


def test_normalised_mutual_information():
    assert _spec(np.outer([1, 2, 3], [2, 1, 1, 4])).normalised_mutual_information(0) == pytest.approx(0, abs=1e-12)
    assert _spec(np.diag([5, 3, 2])).normalised_mutual_information(0) == pytest.approx(1.0)
    # the expert determines the label (two experts per label): still 1
    assert _spec([[4, 2, 0], [0, 0, 7]]).normalised_mutual_information(0) == pytest.approx(1.0)
    # p = [[3, 1], [1, 3]] / 8, marginals 1/2: I = 3/4 ln 1.5 + 1/4 ln 0.5, H = ln 2
    hand = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / math.log(2)
    assert _spec([[3, 1], [1, 3]]).normalised_mutual_information(0) == pytest.approx(hand)
    assert 0.18 < hand < 0.19
    # labels 0 and 1 share expert 0: H(label) = ln 3, I = H(expert) = (2/3 ln 3/2 + 1/3 ln 3)
    shared = _spec([[2, 0], [2, 0], [0, 2]]).normalised_mutual_information(0)
    assert shared == pytest.approx((2 / 3 * math.log(1.5) + 1 / 3 * math.log(3)) / math.log(3))
    assert math.isnan(_spec([[3, 4]]).normalised_mutual_information(0))  # one label: no entropy to explain


def test_specialisation_round_trips_through_json():
    counts = [np.array([[1, 2, 3], [4, 5, 6]]), np.array([[0, 9, 1], [2, 2, 2]])]
    spec = Specialisation(("punctuation", "number"), counts)
    back = Specialisation.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back.labels == spec.labels and isinstance(back.labels, tuple)
    assert len(back.counts) == 2
    for a, b in zip(back.counts, spec.counts, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    assert back.normalised_mutual_information(1) == spec.normalised_mutual_information(1)


def test_token_purity():
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(rng.integers(0, 20, size=(4, 25)))
    lookup = torch.from_numpy(rng.integers(0, 6, size=20))
    mixed = torch.tensor([0, 0, 1, 1, 1, 2])
    purities = token_purity([lookup[ids.reshape(-1)], mixed[torch.arange(100) % 6]], ids)
    assert purities[0] == 1.0  # the expert is a function of the token id
    # second layer by hand: for each token id, the count of its most frequent expert
    e = mixed[torch.arange(100) % 6].numpy()
    flat = ids.reshape(-1).numpy()
    hand = sum(np.bincount(e[flat == t]).max() for t in np.unique(flat)) / 100
    assert purities[1] == pytest.approx(hand) and hand < 1
    # ids 0, 0, 0, 1, 1 going to experts 0, 0, 1, 1, 1: 2 + 2 of 5
    assert token_purity([torch.tensor([0, 0, 1, 1, 1])], torch.tensor([[0, 0, 0, 1, 1]])) == [pytest.approx(0.8)]
    # random routing of a single token id: the largest expert's share
    assert token_purity([torch.tensor([0, 1, 2, 3])], torch.zeros(4, dtype=torch.int64)) == [0.25]


# ------------------------------------------------------------------ genres
DOCS = [["romance/a.txt", 10, 2], ["conto/b.txt", 5, 1], ["romance/c.txt", 4, 0], ["poesia/d.txt", 1, 3]]


def test_genre_labels_of_the_val_and_train_splits():
    labels, names = genre_labels(DOCS, "val", np.array([0, 1, 2, 3, 4, 5]))
    assert names == ["conto", "poesia", "romance"]  # sorted
    # val: a (2 tokens), b (1), c (none), d (3)
    assert [names[i] for i in labels] == ["romance", "romance", "conto", "poesia", "poesia", "poesia"]
    labels, names = genre_labels(DOCS, "train", np.array([[0, 9], [10, 14], [15, 18], [19, 19]]))
    assert labels.shape == (4, 2)  # the shape of the positions
    assert [names[i] for i in labels.reshape(-1)] == ["romance", "romance", "conto", "conto", "romance",
                                                      "romance", "poesia", "poesia"]
    labels, _ = genre_labels(DOCS, "val", np.array([], dtype=np.int64))
    assert labels.shape == (0,)


def test_genre_labels_reject_positions_past_the_split_and_unknown_splits():
    with pytest.raises(ValueError, match=r"positions must be in \[0, 6\) \(the tokens of the val split\), got 0..6"):
        genre_labels(DOCS, "val", np.array([0, 6]))
    with pytest.raises(ValueError, match=r"\[0, 20\) \(the tokens of the train split\), got 20..20"):
        genre_labels(DOCS, "train", np.array([20]))
    with pytest.raises(ValueError, match=r"got -1..2"):
        genre_labels(DOCS, "val", np.array([-1, 2]))
    with pytest.raises(KeyError):
        genre_labels(DOCS, "test", np.array([0]))


def test_strongest_lists_the_largest_enrichments_with_their_shares():
    spec = _spec([[3, 1], [0, 0], [1, 7]])  # P(e0) = 4/12, P(e1) = 8/12; label l1 has no tokens
    # l0 -> e0: (3/4) / (1/3) = 2.25; l2 -> e1: (7/8) / (2/3) = 1.3125; l2 -> e0: 0.375; l0 -> e1: 0.375
    assert spec.strongest(0, count=2) == [("l0", 0, pytest.approx(2.25), 0.75), ("l2", 1, pytest.approx(1.3125), 0.875)]
    assert spec.strongest(0, count=1, min_share=0.5) == [("l2", 1, pytest.approx(1.3125), 0.875)]  # l0: 4 of 12
    assert len(spec.strongest(0, count=10)) == 4  # the empty label has no cells
