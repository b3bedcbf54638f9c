"""Generation with a key/value cache gives the tokens and logits of the uncached path."""

import pytest
import torch
from torch.testing import assert_close

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.kv_cache import KVCache


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
    return m.eval()


def _cache(model, batch):
    c = model.config
    return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.head_size, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("chunks", [[16], [5, 1, 1, 1, 8], [1] * 16, [4, 3, 3, 6]])
def test_cached_logits_equal_the_full_forward(model, chunks):
    """Feeding the tokens in pieces (a prefill, single tokens, or several at a time) gives every
    position the logits of one full forward pass."""
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))  # (B, T)
    full, _ = model(idx)  # (B, T, V)
    cache, pieces, start = _cache(model, 2), [], 0
    with torch.no_grad():
        for n in chunks:
            pieces.append(model._logits(idx[:, start : start + n], cache))
            start += n
    assert cache.length == 16
    assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt_len,new", [(1, 10), (5, 11), (5, 40), (16, 20)])
def test_greedy_generation_is_the_same_with_and_without_the_cache(model, prompt_len, new):
    """Including past block_size (16), where the window slides and the cache is refilled."""
    idx = torch.randint(0, 50, (2, prompt_len), generator=torch.Generator().manual_seed(2))
    cached = model.generate(idx, new, top_k=1)
    uncached = model.generate(idx, new, top_k=1, use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached, uncached)


def test_sampling_uses_the_generator_the_same_way(model):
    idx = torch.randint(0, 50, (1, 3), generator=torch.Generator().manual_seed(3))
    a = model.generate(idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = model.generate(idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(a, b)


def test_the_cache_refuses_more_than_block_size(model):
    cache = _cache(model, 1)
    k = torch.zeros(1, 2, 10, 8)
    cache.append(0, k, k)
    cache.advance(10)
    with pytest.raises(ValueError, match="the cache holds 16 positions; 20 were asked for"):
        cache.append(0, k, k)


def test_zero_new_tokens_returns_the_prompt(model):
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.generate(idx, 0), idx)
