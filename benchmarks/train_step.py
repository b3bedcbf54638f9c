"""One training step (forward, backward, AdamW) of our GPT against transformers' GPT2LMHeadModel.

    python -m benchmarks.train_step                 # Part-1 config at B=1 and B=16, and a larger one
    python -m benchmarks.train_step --repeats 30

Both models hold the same weights (copied with `to_hf`), see the same batch, and are timed in turn
in one process. Model FLOPs utilisation (MFU) = the model's training FLOPs per step / step time,
divided by this machine's own fp32 matmul peak, measured by the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch

from nanogpt_lib import GPT, TrainConfig, make_optimizer, part1_config, shift_targets
from nanogpt_lib.hf import to_hf

from .common import cpu_has_fast_bf16, interleaved, machine, matmul_peak, sync, table, timing_cells

VOCAB = 4096  # the bundled tokenizer's size (the Part-1 model's vocabulary here)


def configs() -> dict[str, tuple]:
    """key -> (name, GPTConfig, batch sizes)."""
    part1 = part1_config(VOCAB)
    return {
        "part1": ("Part 1 (4L 4H 128d, T=100)", part1, (1, 16)),
        # the post's tokenizer: the output layer and the cross-entropy over 50,257 tokens dominate
        "part1-vocab50k": ("Part 1, vocab 50,257", part1_config(50257), (16,)),
        "larger": ("larger (6L 8H 512d, T=128)",
                   dataclasses.replace(part1, n_layer=6, n_head=8, n_embd=512, block_size=128), (16,)),
    }


def _step(model, optimizer, forward, autocast):
    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = forward(model)
        loss.backward()
        optimizer.step()
    return run


def variants(config, batch: int, device: torch.device, with_compile: bool) -> dict:
    """name -> step function; every model starts from the same weights."""
    torch.manual_seed(0)
    base = GPT(config).to(device)
    x = torch.randint(0, config.vocab_size, (batch, config.block_size), device=device)  # (B, T)
    y = shift_targets(x)  # (B, T), last -1
    tc = TrainConfig()

    def ours_fwd(m):
        return m(x, targets=y)[1]

    def hf_fwd(m):
        return m(input_ids=x, labels=x).loss  # transformers shifts the labels itself

    def clone():
        m = GPT(config).to(device)
        m.load_state_dict(base.state_dict())
        return m.train()

    fp32 = contextlib.nullcontext
    hf = to_hf(base).to(device).train()
    eager = clone()  # the optimizer must hold the parameters of the model it steps
    out = {
        "transformers GPT2LMHeadModel": _step(hf, make_optimizer(hf, tc), hf_fwd, fp32),
        "ours (eager, fp32)": _step(eager, make_optimizer(eager, tc), ours_fwd, fp32),
    }
    m = clone()
    fused = torch.optim.AdamW(make_optimizer(m, tc).param_groups, lr=tc.lr, betas=tc.betas, fused=True)
    out["ours + fused AdamW"] = _step(m, fused, ours_fwd, fp32)
    bf16_ok = device.type == "cuda" or cpu_has_fast_bf16()
    if bf16_ok:
        m = clone()
        out["ours + bf16 autocast"] = _step(m, make_optimizer(m, tc), ours_fwd,
                                            lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    if with_compile:
        m = clone()
        compiled = torch.compile(m)
        step = _step(compiled, make_optimizer(m, tc), ours_fwd, fp32)
        start = time.perf_counter()
        step()  # compiles forward and backward
        sync(device)
        print(f"  torch.compile: first step (compilation) took {time.perf_counter() - start:.1f} s")
        out["ours + torch.compile"] = step
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--configs", nargs="+", choices=sorted(configs()), default=sorted(configs()),
                   help="which model sizes to run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    print(f"machine: {machine()}")
    bf16 = matmul_peak(device, torch.bfloat16) if device.type == "cuda" or cpu_has_fast_bf16() else None
    print(f"measured matmul peak: fp32 {peak / 1e9:.1f} GFLOP/s, bf16 "
          f"{'not measured (no fast bf16 on this CPU)' if bf16 is None else f'{bf16 / 1e9:.1f} GFLOP/s'}\n")
    rows = []
    for key in args.configs:
        name, config, batches = configs()[key]
        flops_per_token = GPT(config).flops_per_token(config.block_size, training=True)
        for batch in batches:
            print(f"{name}, B={batch} ...")
            fns = variants(config, batch, device, with_compile=not args.no_compile)
            times = interleaved(fns, repeats=args.repeats, device=device)
            tokens = batch * config.block_size
            ref = times["transformers GPT2LMHeadModel"]
            for variant, t in times.items():
                mfu = flops_per_token * tokens / t / peak
                rows.append([name, str(batch), variant, *timing_cells(t, tokens, ref), f"{mfu:.1%}"])
    print()
    print(table(["config", "B", "variant", "ms/step", "tokens/s", "vs transformers", "MFU (fp32 peak)"], rows))


if __name__ == "__main__":
    main()
