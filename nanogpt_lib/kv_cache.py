"""A key/value cache for generation.

Without a cache, writing token n+1 runs the whole model over all n previous tokens again. Their keys
and values never change (causal attention: a token's k and v depend only on the tokens before it),
so the cache keeps them, layer by layer, and each new token costs one position's worth of work.

GPT-2's learned absolute positions limit this to the first block_size tokens: once the context
window slides, every token's position changes, and `GPT.generate` refills the cache from the
cropped window (the same work as the uncached path for that step).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the tokens seen so far: for each layer, buffers of (B, H, block_size, D)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, n_head, block_size, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]  # L x (B, H, bs, D)
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.block_size = block_size
        self.length = 0  # positions filled, the same in every layer

    def reset(self) -> None:
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' k, v (B, H, t, D) of `layer` after the cached ones and return all of
        them, (B, H, length + t, D). `advance(t)` moves the length once every layer has appended."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.block_size:
            raise ValueError(f"the cache holds {self.block_size} positions; {end} were asked for")
        k_all, v_all = self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H, end, D) views
        k_all[:, :, start:] = k
        v_all[:, :, start:] = v
        return k_all, v_all

    def advance(self, t: int) -> None:
        self.length += t
