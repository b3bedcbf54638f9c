"""Notebook 08's comparison over many seeds: how much of a gap between variants is the seed?

    python -m studies.modern_moe_seeds --device cuda --seeds 12              # the notebook's variants
    python -m studies.modern_moe_seeds --device cuda --seeds 12 --ablation   # the balancing ablation
    python -m studies.modern_moe_seeds --device cuda --seeds 12 --dropless   # no capacity limit in training

Each seed trains every variant on the bundled corpus with notebook 06's recipe (150 steps of 8 windows,
AdamW 3e-3, the same windows for every model) and records the last validation perplexity, and, over the
last 10 steps, the load imbalance (busiest expert / fair share, mean over layers) and the dropped
choices. Printed per seed, then mean ± standard deviation, range, and how often each variant was best.
Results and their reading: docs/studies.md. On CUDA the runs are not bit-reproducible (index_add_ sums
in a varying order), so a rerun gives slightly different figures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace

import torch

from nanogpt_lib import GPTConfig, TrainConfig, bundled_corpus, encode, load_tokenizer, train_val_split
from nanogpt_lib.corpus_train import CorpusConfig
from nanogpt_lib.experiments import compare_on_corpus, modern_moe_variants
from nanogpt_lib.moe import balance_summary
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_NAME
from nanogpt_lib.tokens import tokens_in_memory


def variants(vocab_size: int, ablation: bool) -> dict[str, GPTConfig]:
    part2 = GPTConfig(block_size=100, vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128, dropout=0.2,
                      n_expert=8, top_k=2, expert_hidden=256)
    notebook = modern_moe_variants(part2)
    if not ablation:
        return {"dense": replace(part2, n_expert=0, expert_hidden=None), **notebook}
    fine = notebook["fine-grained + shared"]  # softmax router, auxiliary loss
    bias_only = dict(aux_loss_weight=0.0, z_loss_weight=0.0)
    return {
        "softmax + aux loss": fine,
        "sigmoid + aux loss": replace(fine, router_type="sigmoid"),
        "sigmoid + bias 0.01": replace(fine, router_type="sigmoid", bias_update_rate=0.01, **bias_only),
        "sigmoid + bias 0.003": replace(fine, router_type="sigmoid", bias_update_rate=0.003, **bias_only),
        "softmax + bias 0.003": replace(fine, bias_update_rate=0.003, **bias_only),
    }


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(prog="python -m studies.modern_moe_seeds", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=12, help="seeds 0 .. N-1")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps per run (notebooks 06 and 08: 150)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ablation", action="store_true", help="balancing ablation instead of the notebook's variants")
    p.add_argument("--dropless", action="store_true", help="no capacity limit in training (nothing dropped)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.steps < 6:
        p.error(f"--seeds {args.seeds} / --steps {args.steps}: need at least 1 seed and 6 steps")
    tokenizer = load_tokenizer(BUNDLED_TOKENIZER_NAME)
    ids = encode(tokenizer, bundled_corpus())  # (1, all tokens)
    train_ids, val_ids = train_val_split(ids, val_fraction=0.1)
    data = tokens_in_memory(train_ids.numpy(), val_ids.numpy(), tokenizer.name_or_path, len(tokenizer),
                            source="bundled corpus")
    configs = variants(len(tokenizer), args.ablation)
    if args.dropless:
        configs = {name: replace(c, capacity_factor=None) for name, c in configs.items()}
    corpus = CorpusConfig(steps=args.steps, batch_size=8, eval_interval=args.steps // 6, eval_batches=2,
                          warmup_steps=max(1, args.steps // 10))
    val = {name: [] for name in configs}
    balance = {name: [] for name in configs}
    start = time.perf_counter()
    for seed in range(args.seeds):
        results = compare_on_corpus(configs, data, TrainConfig(lr=3e-3, seed=seed), corpus, progress=False,
                                    device=torch.device(args.device))
        for r in results:
            val[r.name].append(math.exp(r.history.evals[-1]["val_loss"]))
            if r.history.moe:
                balance[r.name].append(balance_summary(r.history.moe[-10:]))
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in val.items())
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    wins = dict.fromkeys(configs, 0)
    for i in range(args.seeds):
        wins[min(configs, key=lambda n: val[n][i])] += 1
    print(f"\n{args.steps} steps, {args.seeds} seeds, {args.device}: validation perplexity mean ± std (range), "
          f"times best; imbalance; dropped")
    for name, values in val.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        line = (f"{name:<22} {statistics.mean(values):7.1f} ± {spread:5.1f} ({min(values):.0f}-{max(values):.0f}), "
                f"best {wins[name]}")
        if balance[name]:
            line += (f"; imbalance {statistics.mean(b[0] for b in balance[name]):.2f}"
                     f"; dropped {statistics.mean(b[1] for b in balance[name]):.1%}")
        print(line)
    return val


if __name__ == "__main__":
    main()
