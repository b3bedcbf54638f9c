"""MoE dispatch: the vectorised layer vs the loop layer vs a dense MLP with the same active parameters.

    python -m benchmarks.moe_dispatch
    python -m benchmarks.moe_dispatch --repeats 20 --threads 2

E experts (8, and 64 at the Part-1 size), top-2, each expert half the dense MLP's width
(C -> 2C -> C), so a token uses as many weights in its two experts as in the dense MLP (C -> 4C -> C);
capacity factor 1.25. Timed, interleaved
in one process: the feed-forward layer alone (forward + backward on a batch of hidden states) and a
whole training step (forward, backward, AdamW) of the model built around it. The two dispatches must
give the same layer output; the command checks it before timing.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from nanogpt_lib import GPT, TrainConfig, make_optimizer, part1_config, train_step
from nanogpt_lib.model import MLP
from nanogpt_lib.moe import MoE

from .common import interleaved, machine, table, timing_cells


def models(dense_config, n_expert: int) -> dict:
    C = dense_config.n_embd
    moe = dataclasses.replace(dense_config, n_expert=n_expert, top_k=2, expert_hidden=2 * C)
    return {"dense MLP": dense_config, "MoE vectorised": moe,
            "MoE loop": dataclasses.replace(moe, moe_dispatch="loop")}


def layer_call(layer: torch.nn.Module, x: torch.Tensor):
    def run():
        x.grad = None
        out = layer(x)
        y = out[0] if isinstance(out, tuple) else out
        y.square().mean().backward()
    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.moe_dispatch", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10, help="timed runs per variant (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}; threads {torch.get_num_threads()}\n")
    part1 = dataclasses.replace(part1_config(4096), dropout=0.0)
    larger = dataclasses.replace(part1, n_layer=6, n_head=8, n_embd=512, block_size=128)
    cases = [("Part 1 (4L 128d, T=100, B=16), 8 experts", part1, 16, 8),
             ("Part 1 (4L 128d, T=100, B=16), 64 experts", part1, 16, 64),
             ("larger (6L 512d, T=128, B=16), 8 experts", larger, 16, 8)]
    rows = []
    for name, config, batch, n_expert in cases:
        tokens = batch * config.block_size
        configs = models(config, n_expert)
        # the layer alone, on the same hidden states
        torch.manual_seed(0)
        layers = {k: (MoE(c) if c.n_expert else MLP(c)).to(device).train() for k, c in configs.items()}
        layers["MoE loop"].load_state_dict(layers["MoE vectorised"].state_dict())
        x = torch.randn(batch, config.block_size, config.n_embd, device=device, requires_grad=True)
        same = torch.allclose(layers["MoE loop"](x)[0], layers["MoE vectorised"](x)[0], atol=1e-5)
        print(f"{name}: loop and vectorised layers agree: {same}")
        layer_s = interleaved({k: layer_call(m, x) for k, m in layers.items()}, args.repeats, device=device)
        # the whole training step
        steps = {}
        for k, c in configs.items():
            torch.manual_seed(0)
            model = GPT(c).to(device)
            opt = make_optimizer(model, TrainConfig(lr=1e-4))
            ids = torch.randint(0, c.vocab_size, (batch, c.block_size), device=device)
            steps[k] = (lambda m=model, o=opt, i=ids: train_step(m, o, (i, i)))
        step_s = interleaved(steps, args.repeats, device=device)
        for k in configs:
            model_active = GPT(configs[k]).num_active_params() if device.type == "cpu" else 0
            rows.append([name, k, f"{model_active:,}", *timing_cells(layer_s[k], tokens, layer_s["dense MLP"]),
                         *timing_cells(step_s[k], tokens, step_s["dense MLP"])])
        loop, vec = layer_s["MoE loop"], layer_s["MoE vectorised"]
        print(f"  vectorised layer is {loop / vec:.2f}x the loop's speed; its step takes "
              f"{step_s['MoE vectorised'] / step_s['dense MLP']:.2f}x the dense step's time\n")
    print(table(["size", "feed-forward", "active params", "layer ms", "layer tokens/s", "layer speed vs dense",
                 "step ms", "step tokens/s", "step speed vs dense"], rows))


if __name__ == "__main__":
    main()
