"""Greedy generation: our `generate` with and without the key/value cache, and transformers'
`generate` on the same weights.

    python -m benchmarks.generation
    python -m benchmarks.generation --repeats 10

For each model size: a 10-token prompt continued by 25 tokens (the course's continuation test) and
by as many tokens as fit in block_size. All three paths must produce the same tokens; the command
checks it before timing.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from nanogpt_lib import GPT, part1_config
from nanogpt_lib.hf import to_hf

from .common import interleaved, machine, table, timing_cells

PROMPT = 10


def variants(ours: GPT, hf, prompt: torch.Tensor, new: int) -> dict:
    """name -> a call writing `new` greedy tokens after `prompt` (1, P)."""
    return {
        "ours, KV cache": lambda: ours.generate(prompt, new, top_k=1),
        "ours, no cache": lambda: ours.generate(prompt, new, top_k=1, use_cache=False),
        "transformers generate": lambda: hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new,
            min_new_tokens=new, pad_token_id=0, use_cache=True),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10, help="timed runs per variant (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"machine: {machine()}\n")
    part1 = part1_config(4096)
    sizes = {"Part 1 (4L 128d, T=100)": part1,
             "larger (6L 512d, T=128)": dataclasses.replace(part1, n_layer=6, n_head=8, n_embd=512, block_size=128)}
    rows = []
    for name, config in sizes.items():
        torch.manual_seed(0)
        ours = GPT(config).to(device).eval()
        hf = to_hf(ours).to(device).eval()
        prompt = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
        prompt = prompt.to(device)
        for new in (25, config.block_size - PROMPT):
            fns = variants(ours, hf, prompt, new)
            with torch.no_grad():
                outs = {k: fn() for k, fn in fns.items()}
            same = all(torch.equal(o, outs["ours, KV cache"]) for o in outs.values())
            print(f"{name}, {new} new tokens: all three write the same tokens: {same}")
            with torch.no_grad():
                times = interleaved(fns, repeats=args.repeats, warmup=1, device=device)
            ref = times["transformers generate"]
            uncached = times["ours, no cache"]
            for variant, t in times.items():
                ms, rate, vs_uncached = timing_cells(t, new, uncached)
                rows.append([name, str(new), variant, ms, rate, vs_uncached, f"{ref / t:.2f}x"])
    print()
    print(table(["model", "new tokens", "variant", "ms", "tokens/s", "vs no cache", "vs transformers"], rows))


if __name__ == "__main__":
    main()
