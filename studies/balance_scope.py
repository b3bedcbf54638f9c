"""Global-batch against micro-batch load balancing: where the balancing loss counts the experts' choices.

    python -m studies.balance_scope --corpus-dir ../shared/corpora/machado --work /work/study_work/balance_scope
    python -m studies.balance_scope --seeds 0 1 2                 # fewer seeds
    python -m studies.balance_scope --aux-loss-weight 0.1         # the same pair with a stronger balancing loss
    python -m studies.balance_scope --summarise                   # only OUT/runs -> OUT/summary.json

The load-balancing loss of Part 2's MoE is  E * sum_i f_i * P_i  (f_i: share of the choices that picked
expert i, P_i: mean router probability of expert i). `TrainConfig.balance_scope` decides which tokens
f_i is counted over: "micro_batch" counts the micro-batch the loss is computed on; "global" counts the
whole optimisation step (every micro-batch of gradient accumulation), while P_i, which carries the
gradient, stays per micro-batch. Qiu et al. 2025 ("Demons in the Detail", arXiv 2501.11873) report that
the global count gives lower perplexity and more specialised experts: a small micro-batch is made of a
few sequences of one text, and asking each of them to be balanced pushes tokens of one kind away from
the expert that suits them.

The protocol is Part 2's (`studies.moe_vs_dense`: Machado de Assis's works, the each-document split,
600 steps of 16 windows of 100 tokens drawn by (seed, step), AdamW 3e-3 with 60 warm-up steps and a
cosine to 3e-4, clip 1.0, dropout 0, the same validation windows), on its `moe-8x2` model (8 experts of
half width, top-2, dropless, balancing loss 0.01, z-loss 0.001), with one change: each step is split
into `--grad-accum` (4) micro-batches of 4 windows (400 tokens), small enough that one micro-batch's
expert counts are noisy. Both scopes of a seed start from the same weights and see the same windows in
the same order (a paired comparison; the first step's loss is the same for both).

Each run (OUT/runs/ARM/seedN.json, ARM "micro_batch" or "global", with "-auxW" for another balancing
weight) records:

- the fixed-window validation loss every 100 steps and the final loss on the whole validation split;
- the training log's routing (`routing_log`): per step the imbalance (busiest expert's share / fair
  share) of the step's last micro-batch, per layer;
- `val_routing`: the final model routing the validation windows, per layer: the imbalance of all those
  tokens together (the global batch's view) and the mean imbalance of micro-batches of 4 windows;
- `specialisation`, as `studies.moe_vs_dense`'s analyse measures it on the validation windows: token
  purity (share of tokens whose top-1 expert is their token id's usual one; also with the choices
  shuffled over the tokens, the purity of routing that ignores the token), and the normalised mutual
  information of the top-1 expert with the token's class and with the work's genre.

A run whose file exists is skipped (claims in --work let several processes share the work; delete stale
claims). At the end OUT/summary.json holds, per arm, the mean and standard deviation over seeds of every
measure, and per seed the paired difference global - micro_batch with its mean, standard deviation and
how many seeds are lower under global. Results and their reading: docs/studies.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from nanogpt_lib import GPT, TrainConfig
from nanogpt_lib.atomic import atomic_write_text
from nanogpt_lib.comparison import fixed_windows, windows_loss
from nanogpt_lib.corpus_train import train_corpus
from nanogpt_lib.distributed import DistContext
from nanogpt_lib.evaluation import eval_mode
from nanogpt_lib.experiments import part2_study_models
from nanogpt_lib.moe import imbalance
from nanogpt_lib.specialisation import (
    CLASSES,
    count_by_label,
    first_choices,
    genre_labels,
    token_purity,
    vocabulary_classes,
)
from nanogpt_lib.study_results import balance_scope_markdown, study_path
from studies.moe_vs_dense import (
    CURVE_WINDOWS,
    Protocol,
    add_run_arguments,
    claim_run,
    machine,
    prepared_corpus,
    routing_log,
    run_path,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "studies" / "results" / "balance_scope"
MODEL = "moe-8x2"
SCOPES = ("micro_batch", "global")
GRAD_ACCUM = 4  # micro-batches per step: 16 windows -> 4 micro-batches of 4 windows (400 tokens)
# Part 2's own moe-8x2 runs: one batch of 16 windows a step, the reference for the rounding noise (`part2_reference`)
PART2_RUNS = ROOT / "studies" / "results" / "moe_vs_dense" / "runs" / MODEL
DEFAULT_AUX = 0.01  # moe-8x2's own balancing weight
LAST_STEPS = 100  # the training log's imbalance is also averaged over the last this many steps
# the per-run numbers the summary compares, each a mean over MoE layers where the run has one per layer
MEASURES = ("val_loss", "imbalance_val_global", "imbalance_val_micro", "imbalance_train_micro",
            "imbalance_train_micro_last", "token_purity", "token_purity_shuffled", "nmi_class", "nmi_genre")


def arm_name(scope: str, aux: float) -> str:
    """'micro_batch' / 'global' at moe-8x2's balancing weight, 'global-aux0.1' at another."""
    return scope if aux == DEFAULT_AUX else f"{scope}-aux{aux:g}"


# -------------------------------------------------------------- measures
@torch.no_grad()
def validation_routing(model: GPT, x: torch.Tensor, micro_windows: int) -> dict:
    """How the trained model spreads the validation windows x (W, T) over its experts, per MoE layer.

    The windows go through in micro-batches of `micro_windows` (eval mode, no capacity limit, so the
    batching changes no choice). `global`: the imbalance of all the choices together, what the global
    scope balances; `micro_batch`: the mean imbalance of the full micro-batches, what the micro-batch
    scope balances; `share`: each expert's share of all the choices."""
    device = next(model.parameters()).device
    per_batch = []  # (L, E) choices per expert of each full micro-batch
    total = None
    with eval_mode(model):
        for start in range(0, len(x), micro_windows):
            xb = x[start : start + micro_windows].to(device)
            _, _, moe = model(xb, with_moe=True)
            counts = torch.stack([s.counts for s in moe.layers]).double().cpu()  # (L, E)
            total = counts if total is None else total + counts
            if len(xb) == micro_windows:
                per_batch.append(counts)
    share = total / total.sum(dim=1, keepdim=True)  # (L, E)
    layers = range(share.shape[0])
    micro = [statistics.fmean(imbalance(c[i] / c[i].sum()) for c in per_batch) for i in layers] if per_batch else []
    return {"global": [imbalance(share[i]) for i in layers], "micro_batch": micro,
            "share": [[round(float(v), 5) for v in share[i]] for i in layers], "micro_batches": len(per_batch)}


def specialisation(model: GPT, x: torch.Tensor, classes: np.ndarray, genres: np.ndarray,
                   genre_names: list[str]) -> dict:
    """`studies.moe_vs_dense.analyse`'s measures of the model's first choices on the windows x (W, T):
    token purity (and with the choices shuffled over the tokens), and the normalised mutual information
    of the top-1 expert with the token class and with the genre; `classes` is the class of every token id,
    `genres` the genre index of every token of x (flattened)."""
    n_expert = model.config.n_expert
    choices = first_choices(model, x)
    by_class = count_by_label(choices, classes[x.reshape(-1).numpy()], CLASSES, n_expert)
    by_genre = count_by_label(choices, genres, genre_names, n_expert)
    shuffle = torch.Generator().manual_seed(0)
    shuffled = [c[torch.randperm(len(c), generator=shuffle)] for c in choices]
    layers = range(len(choices))
    return {"token_purity": token_purity(choices, x), "token_purity_shuffled": token_purity(shuffled, x),
            "nmi_class": [by_class.normalised_mutual_information(i) for i in layers],
            "nmi_genre": [by_genre.normalised_mutual_information(i) for i in layers],
            "by_class": by_class.to_dict(), "by_genre": by_genre.to_dict()}


# -------------------------------------------------------------------- run
def train_scope(scope: str, aux: float, seed: int, data, vocab_size: int, protocol: Protocol, grad_accum: int,
                device: torch.device, curve, whole, labels) -> dict:
    """One run: moe-8x2 (balancing weight `aux`) trained with Part 2's protocol, `grad_accum` micro-batches a
    step, balancing counted over `scope`; returns the run's record (see the module docstring)."""
    config = replace(part2_study_models(vocab_size)[MODEL], aux_loss_weight=aux)
    corpus = replace(protocol.corpus_config(), grad_accum=grad_accum)
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    evals: list[dict] = []

    def on_eval(record: dict, history) -> None:
        evals.append({"step": record["step"], "val_loss": windows_loss(model, *curve)})

    run = train_corpus(model, data, TrainConfig(lr=protocol.lr, seed=seed, balance_scope=scope), corpus,
                       DistContext(device=device), on_eval=on_eval, progress=False)
    routing = routing_log(run.history.moe)
    train_imbalance = np.asarray(routing["imbalance"])  # (steps, layers): the last micro-batch of each step
    micro_windows = corpus.micro_batch_size(1)
    return {
        "arm": arm_name(scope, aux), "model": MODEL, "balance_scope": scope, "seed": seed,
        "config": asdict(config), "protocol": {**asdict(protocol), "grad_accum": grad_accum,
                                               "micro_batch_windows": micro_windows, "block_size": 100},
        "params": model.num_params(), "active_params": model.num_active_params(),
        "evals": evals, "final": {"val_loss": windows_loss(model, *whole)}, "eval_windows": int(whole[0].shape[0]),
        "train_loss": [round(v, 4) for v in run.history.loss],
        "routing": routing,
        "train_imbalance": {"all_steps": train_imbalance.mean(axis=0).round(4).tolist(),
                            "last_steps": train_imbalance[-LAST_STEPS:].mean(axis=0).round(4).tolist()},
        "val_routing": validation_routing(model, whole[0], micro_windows),
        "specialisation": specialisation(model, whole[0], *labels),
        "train_seconds": round(run.train_seconds, 2), "machine": machine(device),
    }


# ---------------------------------------------------------------- summary
def run_measures(record: dict) -> dict[str, float]:
    """The numbers of one run that the summary compares (per-layer ones averaged over the layers)."""
    spec, val = record["specialisation"], record["val_routing"]
    found = {"val_loss": record["final"]["val_loss"],
             "imbalance_val_global": statistics.fmean(val["global"]),
             "imbalance_val_micro": statistics.fmean(val["micro_batch"]) if val["micro_batch"] else math.nan,
             "imbalance_train_micro": statistics.fmean(record["train_imbalance"]["all_steps"]),
             "imbalance_train_micro_last": statistics.fmean(record["train_imbalance"]["last_steps"])}
    for name in ("token_purity", "token_purity_shuffled", "nmi_class", "nmi_genre"):
        found[name] = statistics.fmean(spec[name])
    return found


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (NaN for one value: written as null) and count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def part2_reference(by_arm: dict[str, dict[int, dict]], reference: Path) -> dict | None:
    """Each default-weight arm minus Part 2's own moe-8x2 run of the same seed (`studies.moe_vs_dense`, one
    batch of 16 windows a step), over the seeds that have a reference run of the same steps and batch.

    In exact arithmetic the "global" arm computes Part 2's updates: its f_i is the step's, and the mean over
    the equal micro-batches of their P_i is the step's P_i (the cross-entropy and the z-loss are means too).
    Only the order of the float sums differs, so global minus Part 2 measures how far rounding alone moves
    a run: the noise floor of any comparison of two runs in this protocol. `identical_steps`: how many
    first steps have the same training loss to 4 decimals."""
    found = {}
    for scope in SCOPES:
        runs = by_arm.get(arm_name(scope, DEFAULT_AUX), {})
        rows = {}
        for seed, r in sorted(runs.items()):
            path = reference / f"seed{seed}.json"
            if not path.is_file():
                continue
            ref = json.loads(path.read_text(encoding="utf-8"))
            same = all(ref["protocol"][k] == r["protocol"][k] for k in ("steps", "batch_size", "lr"))
            if not same or ref["config"]["aux_loss_weight"] != DEFAULT_AUX:
                continue
            pairs = zip(r["train_loss"], ref["train_loss"], strict=True)
            rows[seed] = {"part2_val_loss": ref["final"]["val_loss"],
                          "difference": r["final"]["val_loss"] - ref["final"]["val_loss"],
                          "identical_steps": next((i for i, (a, b) in enumerate(pairs) if a != b),
                                                  len(r["train_loss"]))}
        if rows:
            found[scope] = {"per_seed": {str(s): v for s, v in rows.items()},
                            **spread([v["difference"] for v in rows.values()])}
    return found or None


def summary(out: Path, reference: Path = PART2_RUNS) -> dict:
    """OUT/runs/ARM/seedN.json condensed: per arm the mean and std over seeds of every measure (and per layer
    of the imbalances), per balancing weight the paired difference global - micro_batch seed by seed, and
    the default-weight arms against Part 2's runs in `reference` (`part2_reference`)."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("*/seed*.json"))]
    if not runs:
        raise SystemExit(f"no run files under {str(out / 'runs')!r}: run the study first")
    by_arm: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    arms, measured = {}, {}
    order = {scope: i for i, scope in enumerate(SCOPES)}  # per balancing weight, micro_batch then global
    for arm, seeds in sorted(by_arm.items(), key=lambda item: (next(iter(item[1].values()))["config"]
                                                               ["aux_loss_weight"], order[item[0].split("-")[0]])):
        measures = measured[arm] = {seed: run_measures(r) for seed, r in sorted(seeds.items())}
        first = next(iter(seeds.values()))
        arms[arm] = {
            "balance_scope": first["balance_scope"], "aux_loss_weight": first["config"]["aux_loss_weight"],
            "seeds": sorted(seeds),
            "per_seed": {str(s): {k: round(v, 5) for k, v in m.items()} for s, m in measures.items()},
            **{name: spread([m[name] for m in measures.values()]) for name in MEASURES},
            "per_layer": {
                "imbalance_val_global": np.mean([r["val_routing"]["global"] for r in seeds.values()], axis=0)
                .round(4).tolist(),
                "imbalance_val_micro": np.mean([r["val_routing"]["micro_batch"] for r in seeds.values()], axis=0)
                .round(4).tolist(),
                "imbalance_train_micro": np.mean([r["train_imbalance"]["all_steps"] for r in seeds.values()], axis=0)
                .round(4).tolist(),
            },
            "curve": {"steps": [e["step"] for e in first["evals"]],
                      "val_loss": np.mean([[e["val_loss"] for e in r["evals"]] for r in seeds.values()], axis=0)
                      .round(5).tolist()},
            "train_seconds": spread([r["train_seconds"] for r in seeds.values()]),
        }
    paired = {}
    for aux in sorted({a["aux_loss_weight"] for a in arms.values()}):
        micro, glob = arm_name("micro_batch", aux), arm_name("global", aux)
        if micro not in arms or glob not in arms:
            continue
        seeds = sorted(set(by_arm[micro]) & set(by_arm[glob]))
        if not seeds:
            continue
        found = {}
        for name in MEASURES:
            d = {s: measured[glob][s][name] - measured[micro][s][name] for s in seeds}
            found[name] = {"per_seed": {str(s): round(v, 5) for s, v in d.items()}, **spread(list(d.values())),
                           "global_lower": sum(v < 0 for v in d.values())}
        found["val_loss"]["favour_global"] = found["val_loss"]["global_lower"]  # a lower val loss is better
        paired[f"aux{aux:g}"] = {"global": glob, "micro_batch": micro, "seeds": seeds, "difference": found}
    protocol = runs[0]["protocol"]
    return {"study": "balance_scope", "model": MODEL,
            "protocol": {**protocol, "curve_windows": CURVE_WINDOWS, "eval_windows": runs[0]["eval_windows"],
                         "corpus": "machado, all genres, each-document split (last 10 % of every work)"},
            "measures": list(MEASURES), "arms": arms, "paired": paired,
            "part2_reference": part2_reference(by_arm, reference)}


def summarise(out: Path) -> dict:
    """Write OUT/summary.json (atomically) and print its tables."""
    found = summary(out)
    atomic_write_text(out / "summary.json", json.dumps(found, indent=1) + "\n")
    if out.resolve() == DEFAULT_OUT.resolve():  # the committed results: also where notebook 11 reads them
        atomic_write_text(study_path("balance_scope"), json.dumps(found, separators=(",", ":")) + "\n")
    print(balance_scope_markdown(found), flush=True)
    return found


# --------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studies.balance_scope", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=list(SCOPES))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--grad-accum", type=int, default=GRAD_ACCUM, help="micro-batches per step of 16 windows")
    p.add_argument("--aux-loss-weight", type=float, default=DEFAULT_AUX,
                   help="the balancing loss's weight (moe-8x2's is 0.01; another one makes arms named ...-auxW)")
    add_run_arguments(p, DEFAULT_OUT, "the claim files (not committed)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="score and measure on this many evenly spaced validation windows instead of the whole "
                   "split (a quick check of the command; the committed results use the whole split)")
    p.add_argument("--summarise", action="store_true", help="only condense OUT's run files into OUT/summary.json")
    args = p.parse_args(argv)
    if args.summarise:
        summarise(args.out)
        return
    protocol = Protocol(steps=args.steps)
    if args.grad_accum < 1 or protocol.batch_size % args.grad_accum:
        raise SystemExit(f"--grad-accum {args.grad_accum} is not allowed: it must divide the {protocol.batch_size} "
                         f"windows of a step")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, tokenizer = prepared_corpus(args.corpus_dir)
    curve = fixed_windows(data.val, 100, min(CURVE_WINDOWS, args.eval_windows or CURVE_WINDOWS))
    whole = fixed_windows(data.val, 100, args.eval_windows)
    # the position in the validation split of every token of `whole`: the same windows cut from 0, 1, 2, ...
    positions = fixed_windows(np.arange(len(data.val)), 100, args.eval_windows)[0].reshape(-1).numpy()
    labels = (vocabulary_classes(tokenizer), *genre_labels(data.meta.document_tokens, "val", positions))
    todo = [(scope, seed) for seed in args.seeds for scope in args.scopes]
    print(f"{len(todo)} runs in all; {MODEL}, {args.grad_accum} micro-batches of "
          f"{protocol.batch_size // args.grad_accum} windows a step; data: {data.meta.source}", flush=True)
    began = time.perf_counter()
    for scope, seed in todo:
        arm = arm_name(scope, args.aux_loss_weight)
        path = run_path(args.out, arm, seed)
        if not claim_run(path, args.work / "claims" / f"balance_scope-{arm}-seed{seed}"):
            continue
        t0 = time.perf_counter()
        record = train_scope(scope, args.aux_loss_weight, seed, data, len(tokenizer), protocol, args.grad_accum,
                             device, curve, whole, labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record) + "\n")
        m = run_measures(record)
        print(f"{arm:<18} seed {seed}: val {m['val_loss']:.4f} (ppl {math.exp(m['val_loss']):.1f}), imbalance "
              f"global {m['imbalance_val_global']:.3f} / micro {m['imbalance_val_micro']:.3f}, purity "
              f"{m['token_purity']:.3f} in {time.perf_counter() - t0:.0f} s [{time.perf_counter() - began:.0f} s "
              f"total]", flush=True)
    summarise(args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
