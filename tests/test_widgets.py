"""The notebooks' slider callbacks, driven without a browser: moving a slider runs the callback."""

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, continue_text
from nanogpt_lib.widgets import config_explorer, config_report, continuation_explorer, continuation_report


def _sliders(w):
    return {c.description.split(" ")[0]: c for c in w.children if hasattr(c, "value")}


def test_config_report_counts_what_the_library_builds():
    report = config_report(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=300, measure_time=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=2, n_head=2, n_embd=64))
    assert f"| parameters (total) | {model.num_params():,} |" in report
    assert f"| parameters without embeddings | {model.num_params(non_embedding=True):,} |" in report
    assert "| head size (n_embd / n_head) | 32 |" in report
    assert "measured" not in report


def test_config_report_shows_the_library_error_for_an_impossible_head_count():
    report = config_report(n_layer=2, n_head=3, n_embd=64, block_size=32, vocab_size=300)
    assert report.startswith("**Impossible configuration.**")
    assert "n_embd=64 is not divisible by n_head=3" in report
    assert "allowed n_head for n_embd=64: 1, 2, 4, 8, 16, 32, 64" in report


def test_config_explorer_updates_when_a_slider_moves():
    w = config_explorer(vocab_size=4096)
    assert "| parameters (total) | 1,330,432 |" in w.result.data  # the Part-1 model
    assert "forward pass, 1 x 100 tokens (measured here)" in w.result.data
    sliders = _sliders(w)
    assert set(sliders) == {"n_layer", "n_head", "n_embd", "block_size"}
    sliders["n_layer"].value = 6
    sliders["n_embd"].value = 192
    expected = GPT(GPTConfig(block_size=100, vocab_size=4096, n_layer=6, n_head=4, n_embd=192)).num_params()
    assert f"| parameters (total) | {expected:,} |" in w.result.data
    sliders["n_head"].value = 5
    assert "n_embd=192 is not divisible by n_head=5" in w.result.data
    assert all(s.continuous_update is False for s in sliders.values())  # recompute on release, not per pixel


def test_config_report_does_not_time_a_forward_pass_over_the_budget():
    report = config_report(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=4096)
    assert "| parameters (total) | 88,988,160 |" in report
    assert "not timed: 219G FLOPs, above the 5G budget of a slider move" in report


@pytest.fixture
def text_and_model(tokenizer):
    ids = tokenizer("Nas manhãs de inverno, a neblina desce devagar sobre o vale e cobre tudo.",
                    return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32))
    return ids, model


def test_continuation_report_greedy_is_the_library_continuation(text_and_model, tokenizer):
    ids, model = text_and_model
    report = continuation_report(model, ids, tokenizer, temperature=1.0, top_k=1, seed=0, prefix_tokens=5,
                                 new_tokens=8)
    greedy = continue_text(model, ids, tokenizer, 5, 8, temperature=1.0, top_k=1)
    assert report.startswith("**greedy (top_k=1), seed 0**")
    assert f"*{greedy.prefix.strip()}* **{greedy.generated.strip()}**" in report
    assert "** " not in report.split("\n")[-1].replace("* **", "")  # emphasis hugs its text: Markdown renders it


def test_continuation_report_samples_reproducibly_per_seed(text_and_model, tokenizer):
    ids, model = text_and_model
    a, b, c = (continuation_report(model, ids, tokenizer, 1.5, 0, seed=s, new_tokens=20) for s in (3, 3, 4))
    assert a == b
    assert a.split("\n")[-1] != c.split("\n")[-1]  # another seed, another sample
    assert "temperature 1.5, top_k off" in a


def test_continuation_explorer_regenerates_when_sliders_move(text_and_model, tokenizer):
    ids, model = text_and_model
    before = ids.clone()
    w = continuation_explorer(model, ids, tokenizer, prefix_tokens=5, new_tokens=20)
    sliders = _sliders(w)
    assert set(sliders) == {"temperature", "top_k", "seed"}
    first = w.result.data
    sliders["top_k"].value = 1
    assert w.result.data.startswith("**greedy (top_k=1)")
    sliders["top_k"].value = 0
    sliders["seed"].value = 7
    assert w.result.data != first
    assert w.result.data == continuation_report(model, ids, tokenizer, 1.0, 0, 7, 5, 20)
    assert torch.equal(ids, before)  # the text is untouched
    assert all(s.continuous_update is False for s in sliders.values())
