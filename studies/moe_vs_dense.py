"""Part 2's experiment on a real corpus: what a Mixture of Experts buys over the dense model.

    python -m studies.moe_vs_dense --corpus-dir ../shared/corpora/machado          # everything, CPU
    python -m studies.moe_vs_dense --experiments main --seeds 0 1 2 3 4 --shard 0/2  # half of main, here
    python -m studies.moe_vs_dense --device cuda --steps 3000 --out studies/results/moe_vs_dense_cuda
    python -m studies.moe_vs_dense --timing        # step time of each model, interleaved, one run
    python -m studies.moe_vs_dense --analyse       # baselines, specialisation, the summary tables

The protocol (the same for every model, seed and experiment):

- corpus: Machado de Assis's complete works (`--corpus machado`: 116 works, about 4.0M tokens with
  the bundled tokenizer), split with prepare's "each-document" split: the last 10 % of every work is
  validation, so validation has every work and genre in the proportions training has;
- model: Part 1's size (4 blocks, 4 heads, width 128, context 100, vocabulary 4,096), dropout 0;
- training: AdamW (lr 3e-3 peak, warm-up 60 steps, cosine to 3e-4, weight decay 0.01, clip 1.0),
  `--steps` steps (600) of 16 windows of 100 tokens drawn by (seed, step): every model of a seed sees
  the same windows in the same order and starts from `torch.manual_seed(seed)`;
- validation: every 100 steps on 256 fixed windows (25,600 tokens, evenly spaced over
  the validation split), and at the end on the whole split (all non-overlapping windows): the same
  tokens for every model and seed;
- MoE: softmax router, top-k renormalised for k >= 2, load-balancing loss 0.01, z-loss 0.001, no
  capacity limit (dropless) unless the experiment says otherwise.

Each run is one JSON file under OUT/runs/MODEL/seedN.json (per evaluation: the fixed-sample val
loss; per step: the train loss and each MoE layer's imbalance and dropped share), written when the
run ends; a run whose file exists is skipped, so the command resumes, and a run another process has
claimed (a claim file in --work) is skipped too, so several processes share the work.
Weights of the first seed's models are kept in --work (not in the repo) for --timing and --analyse.
Results and their reading: docs/studies.md and notebooks 06 and 06b.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt_lib import GPT, GPTConfig, TrainConfig, load_tokenizer, train_step
from nanogpt_lib.atomic import atomic_path, atomic_write_text
from nanogpt_lib.baselines import count_baselines
from nanogpt_lib.comparison import fixed_windows, windows_loss
from nanogpt_lib.corpora import cache_root, corpus_works
from nanogpt_lib.corpus_train import CorpusConfig, train_corpus
from nanogpt_lib.distributed import DistContext
from nanogpt_lib.experiments import CAPACITY_EXPERTS, CAPACITY_FACTORS, capacity_key
from nanogpt_lib.experiments import part2_study_models as models
from nanogpt_lib.moe import MoE, imbalance
from nanogpt_lib.prepare import prepare_named
from nanogpt_lib.specialisation import (
    CLASSES,
    count_by_label,
    first_choices,
    genre_labels,
    token_purity,
    vocabulary_classes,
)
from nanogpt_lib.study_results import save_study, summarise_runs
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_NAME
from nanogpt_lib.tokens import TRAIN_STREAM, open_tokens, shard_batches, window_starts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "studies" / "results" / "moe_vs_dense"
CURVE_WINDOWS = 256  # fixed validation windows scored at every evaluation


# ------------------------------------------------------------------ models
EXPERIMENTS = {
    "main": ("dense", "moe-8x2", "switch-8x1", "fine-16x4", "dense-4x-wide"),
    "k": ("switch-8x1", "moe-8x2", "moe-8x4"),
    "aux": ("moe-8x2-aux0", "moe-8x2-aux0.001", "moe-8x2", "moe-8x2-aux0.1"),
    "modern": ("moe-8x2", "swiglu-8x2", "fine-shared-30x6", "fine-shared-lossfree"),
    "capacity": tuple(capacity_key(e, f) for e in CAPACITY_EXPERTS for f in CAPACITY_FACTORS),
}


# -------------------------------------------------------------------- data
@dataclass(frozen=True)
class Protocol:
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    eval_interval: int = 100

    def corpus_config(self) -> CorpusConfig:
        return CorpusConfig(steps=self.steps, batch_size=self.batch_size, eval_interval=self.eval_interval,
                            eval_batches=1)


def prepared_corpus(corpus_dir: str | None):
    """The Machado tokens and the bundled tokenizer: prepared once into the cache folder the notebooks use
    (named after the tokenizer's hash, so another tokenizer gets its own)."""
    tokenizer = load_tokenizer(BUNDLED_TOKENIZER_NAME)
    result = prepare_named("machado", tokenizer, local=corpus_dir)
    return open_tokens(result.folder), tokenizer


# --------------------------------------------------------------------- run
def routing_log(records: list[dict]) -> dict:
    """Per step, mean over MoE layers... kept per layer: imbalance (busiest / fair share), dropped share,
    auxiliary loss; and the expert shares of each layer averaged over the last 10 steps."""
    if not records:
        return {}
    last = records[-10:]
    layers = len(records[0]["share"])
    return {
        "imbalance": [[round(imbalance(s), 4) for s in r["share"]] for r in records],  # (steps, layers)
        "dropped": [[round(d, 4) for d in r["dropped"]] for r in records],
        "aux_loss": [round(r["aux_loss"], 4) for r in records],
        "final_share": [[statistics.fmean(r["share"][i][e] for r in last) for e in range(len(last[0]["share"][i]))]
                        for i in range(layers)],
    }


def eval_with_capacity(model: GPT, factor: float | None, x: torch.Tensor, y: torch.Tensor) -> float:
    """Whole-split val loss with the eval capacity set to `factor` (batches of 16 windows, as training)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    saved = [m.eval_capacity_factor for m in layers]
    for m in layers:
        m.eval_capacity_factor = factor
    try:
        return windows_loss(model, x, y, batch_size=16)
    finally:
        for m, old in zip(layers, saved, strict=True):
            m.eval_capacity_factor = old


def train_one(key: str, config: GPTConfig, seed: int, data, protocol: Protocol, device: torch.device,
              curve: tuple[torch.Tensor, torch.Tensor], whole: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict, GPT]:
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    curve_losses: list[dict] = []

    def on_eval(record: dict, history) -> None:
        curve_losses.append({"step": record["step"], "val_loss": windows_loss(model, *curve),
                             "train_batch_loss": record["train_loss"]})

    run = train_corpus(model, data, TrainConfig(lr=protocol.lr, seed=seed), protocol.corpus_config(),
                       DistContext(device=device), on_eval=on_eval, progress=False)
    final = {"val_loss": windows_loss(model, *whole)}
    if config.n_expert > 1 and config.capacity_factor is not None:
        final["val_loss_train_capacity"] = eval_with_capacity(model, config.capacity_factor, *whole)
    record = {
        "model": key, "seed": seed, "config": asdict(config), "protocol": asdict(protocol),
        "params": model.num_params(), "active_params": model.num_active_params(),
        "evals": curve_losses, "final": final, "eval_windows": int(whole[0].shape[0]),
        "train_loss": [round(v, 4) for v in run.history.loss],
        "routing": routing_log(run.history.moe), "train_seconds": round(run.train_seconds, 2),
        "machine": machine(device),
    }
    return record, model


def machine(device: torch.device) -> dict:
    return {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def run_path(out: Path, key: str, seed: int) -> Path:
    return out / "runs" / key / f"seed{seed}.json"


def weights_path(work: Path, key: str, seed: int) -> Path:
    return work / "weights" / f"{key}-seed{seed}.pt"


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """The trained weights, for --timing and --analyse (written whole or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def claim_run(result: Path, claim: Path) -> bool:
    """Whether this process takes the run whose result file is `result`: not when the file exists, nor when
    another process of the study holds `claim` (delete stale claims of runs that were stopped)."""
    claim.parent.mkdir(parents=True, exist_ok=True)
    if result.is_file():
        return False
    try:
        claim.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def write_timing(out: Path, seconds: dict[str, float], device: torch.device, rounds: int, **extra) -> None:
    """OUT/timing-DEVICE.json from `time_steps`' medians, and one line per model in dense steps."""
    found = {"seconds_per_step": seconds, "machine": machine(device), "rounds": rounds, "steps_per_round": 5, **extra}
    atomic_write_text(out / f"timing-{device.type}.json", json.dumps(found, indent=1) + "\n")
    width = max(16, *(len(key) + 1 for key in seconds))
    for key, s in seconds.items():
        print(f"{key:<{width}} {1000 * s:7.1f} ms/step  {s / seconds['dense']:.2f}x dense")


def add_run_arguments(p: argparse.ArgumentParser, default_out: Path, work_help: str) -> None:
    """The options every study command shares: device, threads, the corpus copy, and where files go."""
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU); default torch's")
    p.add_argument("--corpus-dir", default=None, help="local copy of the Machado corpus (else $NANOGPT_MACHADO_DIR, "
                   "else the cache)")
    p.add_argument("--out", type=Path, default=default_out, help="where the result files go (committed)")
    p.add_argument("--work", type=Path, default=cache_root() / "studies", help=work_help)


# ------------------------------------------------------------------ timing
def time_steps(keys: list[str], configs: dict[str, GPTConfig], data, protocol: Protocol, work: Path, seed: int,
               device: torch.device, rounds: int = 8, steps_per_round: int = 5) -> dict[str, float]:
    """Median seconds per training step of each model, measured interleaved (model A's steps, then B's,
    ... repeated `rounds` times) on real batches, starting from the first seed's trained weights (so the
    router is as skewed as it is at the end of training); the caller keeps only models that have them."""
    trained = {}
    for key in keys:
        model = GPT(configs[key]).to(device)
        model.load_state_dict(torch.load(weights_path(work, key, seed), map_location=device, weights_only=True))
        opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr * 0.1, weight_decay=0.01, betas=(0.9, 0.95))
        trained[key] = (model, opt)
    times: dict[str, list[float]] = {key: [] for key in keys}
    block = 100
    for r in range(rounds + 1):  # round 0 warms up
        for key in keys:
            model, opt = trained[key]
            for s in range(steps_per_round):
                step = 10_000 + r * steps_per_round + s
                starts = window_starts(len(data.train), block, protocol.batch_size, seed, TRAIN_STREAM, step)
                batches = [(x.to(device), y.to(device)) for x, y in shard_batches(data.train, starts, block, 1, 1, 0)]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                began = time.perf_counter()
                train_step(model, opt, batches, grad_clip=1.0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r > 0:
                    times[key].append(time.perf_counter() - began)
    return {key: statistics.median(v) for key, v in times.items()}


# ---------------------------------------------------------------- analyse
SPECIALISATION_MODELS = ("moe-8x2", "switch-8x1", "fine-16x4", "moe-8x2-aux0")


def analyse(configs: dict[str, GPTConfig], data, tokenizer, args) -> None:
    """Baselines, the tokenizer question, and expert specialisation, each written to OUT as JSON."""
    whole = fixed_windows(data.val, 100)
    found = count_baselines(data.train, whole[0].numpy(), whole[1].numpy(), len(tokenizer))
    baselines = {**asdict(found), "targets": int(whole[1].numel()), "split": "validation, all windows"}
    atomic_write_text(args.out / "baselines.json", json.dumps(baselines, indent=1) + "\n")
    print(f"baselines: unigram {found.unigram:.4f}, bigram {found.bigram:.4f} (lambda {found.bigram_lambda})")
    atomic_write_text(args.out / "tokenizer.json", json.dumps(tokenizer_check(args.corpus_dir), indent=1) + "\n")
    classes = vocabulary_classes(tokenizer)
    x = whole[0]  # (W, T)
    positions = np.arange(x.numel())  # window w, position t is val token w * T + t
    genres, genre_names = genre_labels(data.meta.document_tokens, "val", positions)
    results = {}
    for key in SPECIALISATION_MODELS:
        path = weights_path(args.work, key, args.seeds[0])
        if not path.is_file():
            print(f"specialisation: no weights for {key} (train it first); skipped")
            continue
        torch.manual_seed(0)
        model = GPT(configs[key])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        choices = first_choices(model, x)
        by_class = count_by_label(choices, classes[x.reshape(-1).numpy()], CLASSES, configs[key].n_expert)
        by_genre = count_by_label(choices, genres, genre_names, configs[key].n_expert)
        shuffle = torch.Generator().manual_seed(0)
        shuffled = [c[torch.randperm(len(c), generator=shuffle)] for c in choices]
        results[key] = {"seed": args.seeds[0], "by_class": by_class.to_dict(), "by_genre": by_genre.to_dict(),
                        "token_purity": token_purity(choices, x),
                        # the same choices shuffled over the tokens: the purity of routing that ignores the token
                        "token_purity_shuffled": token_purity(shuffled, x),
                        "nmi_class": [by_class.normalised_mutual_information(i) for i in range(len(choices))],
                        "nmi_genre": [by_genre.normalised_mutual_information(i) for i in range(len(choices))]}
        shown = {name: [round(v, 3) for v in results[key][name]] for name in ("token_purity", "nmi_class", "nmi_genre")}
        print(f"specialisation {key}: {shown}")
    atomic_write_text(args.out / "specialisation.json", json.dumps(results) + "\n")


def tokenizer_check(corpus_dir: str | None) -> dict:
    """Bytes per token on the validation text (the last 10 % of every work): the bundled tokenizer, and
    byte-level BPEs of the same and twice its vocabulary trained on the training text of this corpus."""
    from nanogpt_lib.tokenizer_train import train_tokenizer

    texts = [path.read_text(encoding="utf-8") for _, path in corpus_works("machado", corpus_dir)]
    train = [t[: int(len(t) * 0.9)] for t in texts]
    val = [t[int(len(t) * 0.9) :] for t in texts]
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    bundled = load_tokenizer(BUNDLED_TOKENIZER_NAME, verbose=False)
    found = {"bundled, 4096": sum(len(bundled(t, add_special_tokens=False)["input_ids"]) for t in val)}
    for vocab in (4096, 8192):
        retrained = train_tokenizer(train, vocab)
        found[f"retrained on Machado, {vocab}"] = sum(len(retrained.encode(t).ids) for t in val)
    return {"val_bytes": val_bytes, "val_tokens": found,
            "bytes_per_token": {name: val_bytes / n for name, n in found.items()}}


def summarise(out: Path) -> Path:
    """OUT/runs/* plus OUT's analysis files -> nanogpt_lib/data/studies/moe_vs_dense.json (what notebooks read)."""
    extras = {"protocol": {**asdict(Protocol()), "block_size": 100, "curve_windows": CURVE_WINDOWS,
                           "corpus": "machado, all genres, each-document split (last 10 % of every work)"},
              "experiments": {name: list(keys) for name, keys in EXPERIMENTS.items()}}
    for name in ("baselines", "tokenizer", "specialisation", "timing-cpu", "timing-cuda"):
        path = out / f"{name}.json"
        if path.is_file():
            extras[name.replace("-cpu", "").replace("-cuda", "_cuda")] = json.loads(path.read_text(encoding="utf-8"))
    return save_study("moe_vs_dense", summarise_runs(out / "runs", extras))


# --------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studies.moe_vs_dense", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--secondary-seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="seeds of the aux and capacity grids (main and k use --seeds)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--only", nargs="+", default=None, help="only these model keys of the chosen experiments")
    add_run_arguments(p, DEFAULT_OUT, "trained weights of the first seed, and the claim files (not committed)")
    p.add_argument("--timing", action="store_true", help="only measure each model's step time (interleaved)")
    p.add_argument("--timing-rounds", type=int, default=8, help="rounds of 5 steps per model in --timing")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="score on this many evenly spaced validation windows instead of the whole split (a quick "
                   "check of the command; the committed results use the whole split)")
    p.add_argument("--summarise", action="store_true",
                   help="only condense OUT's run files and analyses into the package's study summary")
    p.add_argument("--analyse", action="store_true",
                   help="only compute the baselines, the tokenizer check and expert specialisation")
    args = p.parse_args(argv)
    if args.summarise:
        summarise(args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    protocol = Protocol(steps=args.steps)
    data, tokenizer = prepared_corpus(args.corpus_dir)
    configs = models(len(tokenizer))
    if args.analyse:
        analyse(configs, data, tokenizer, args)
        return
    if args.timing:
        chosen = ["dense", *(k for name in args.experiments for k in EXPERIMENTS[name])]  # dense: the unit
        keys = [key for key in dict.fromkeys(chosen) if weights_path(args.work, key, args.seeds[0]).is_file()]
        if "dense" not in keys:
            raise SystemExit(f"--timing needs the dense model's trained weights in {str(args.work)!r} (seed "
                             f"{args.seeds[0]}): every step time is given in dense steps; train it first")
        seconds = time_steps(keys, configs, data, protocol, args.work, args.seeds[0], device, args.timing_rounds)
        write_timing(args.out, seconds, device, args.timing_rounds, batch_tokens=protocol.batch_size * 100)
        return
    curve = fixed_windows(data.val, 100, min(CURVE_WINDOWS, args.eval_windows or CURVE_WINDOWS))
    whole = fixed_windows(data.val, 100, args.eval_windows)
    todo = []
    for name in args.experiments:
        seeds = args.seeds if name in ("main", "k") else args.secondary_seeds
        for seed in seeds:
            for key in EXPERIMENTS[name]:
                if args.only is not None and key not in args.only:
                    continue
                if (key, seed) not in todo:
                    todo.append((key, seed))
    tokens = data.meta.tokens
    print(f"{len(todo)} runs in all; data: {data.meta.source}, {tokens['train']:,} train + {tokens['val']:,} val "
          f"tokens", flush=True)
    began = time.perf_counter()
    for key, seed in todo:
        path = run_path(args.out, key, seed)
        if not claim_run(path, args.work / "claims" / f"{key}-seed{seed}"):
            continue
        t0 = time.perf_counter()
        record, model = train_one(key, configs[key], seed, data, protocol, device, curve, whole)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record) + "\n")
        if seed == args.seeds[0]:
            save_weights(weights_path(args.work, key, seed), model)
        print(f"{key:<18} seed {seed}: val {record['final']['val_loss']:.4f} (ppl "
              f"{math.exp(record['final']['val_loss']):.1f}) in {time.perf_counter() - t0:.0f} s "
              f"[{time.perf_counter() - began:.0f} s total]", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
