"""Sparse upcycling on Machado de Assis: does a dense model copied into an MoE beat training on?

    python -m studies.upcycling --corpus-dir ../shared/corpora/machado     # every arm, seeds 0-4, CPU
    python -m studies.upcycling --seeds 0 1 --threads 1 &                   # two processes share the work
    python -m studies.upcycling --timing       # step time of the dense model and of the MoE, interleaved
    python -m studies.upcycling --summarise    # the runs -> nanogpt_lib/data/studies/upcycling.json

Part 2's protocol (`studies.moe_vs_dense`: corpus, split, Part 1's model with dropout 0, batches of
16 windows of 100 tokens drawn by (seed, step), AdamW 3e-3 with 60 warm-up steps and a cosine to 3e-4
over 600 steps, the same validation windows). Per seed:

- dense, steps 1-300 (`phase1`): the first half of a 600-step run, saved with its optimizer;
- `dense`: (a) that run continued to step 600 (= Part 2's dense run);
- `upcycled`: (b) at step 300 the dense model becomes 8 experts of the MLP's width, top-2 (each expert a
  copy of its block's MLP, a fresh N(0, 0.02) router, dropless, balancing loss 0.01, z-loss 0.001), its
  AdamW moments carried over, trained on along the same schedule to step 600;
- `upcycled-fresh`: (b) with a fresh AdamW (the optimizer question);
- `scratch`: (c) the same 8 x top-2 MoE from random weights, for as many steps as cost the FLOPs of
  300 dense steps plus 300 MoE steps, with its own warm-up and cosine over those steps;
- `dense-same-flops`: (d) the dense model from random weights for as many steps as cost the upcycled
  arm's FLOPs (300 + 300 x F_moe / F_dense), with its own schedule: what the extra compute buys a dense model.

Every arm of a seed sees the same windows at the same step. Each run is OUT/runs/ARM/seedN.json: the
val loss on 256 fixed windows every 50 steps (phase 1's points included in the continued arms), the
final loss on the whole validation split, per evaluation (every 10 steps) how far apart the experts
are (`expert_spread`), and per step the router's entropy and the load imbalance. A run whose file
exists is skipped and claims in --work let several processes share the work (delete stale claims).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from nanogpt_lib import GPT, TrainConfig
from nanogpt_lib.atomic import atomic_write_text
from nanogpt_lib.comparison import fixed_windows, windows_loss
from nanogpt_lib.corpus_train import train_corpus
from nanogpt_lib.distributed import DistContext
from nanogpt_lib.experiments import part1_size
from nanogpt_lib.moe import imbalance
from nanogpt_lib.study_results import save_study
from nanogpt_lib.upcycling import expert_spread, upcycle_checkpoint, upcycle_config
from studies.moe_vs_dense import (
    CURVE_WINDOWS,
    Protocol,
    add_run_arguments,
    claim_run,
    machine,
    prepared_corpus,
    save_weights,
    time_steps,
    weights_path,
    write_timing,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "studies" / "results" / "upcycling"
SWITCH_STEP = 300  # where the dense run is upcycled (half of Part 2's 600 steps)
CURVE_EVERY = 50  # the fixed-window val loss every this many steps
EVAL_EVERY = 10  # expert spread every this many steps
N_EXPERT, TOP_K = 8, 2
# in the order a process takes them
ARMS = ("phase1", "scratch", "dense", "upcycled", "upcycled-fresh", "dense-same-flops")


def moe_config(vocab_size: int):
    return upcycle_config(part1_size(vocab_size), N_EXPERT, TOP_K, aux_loss_weight=0.01, z_loss_weight=0.001)


def scratch_steps(vocab_size: int, steps: int, switch: int) -> int:
    """Steps of the MoE from scratch that cost as much as `switch` dense steps then the MoE to `steps`:
    T + S * F_dense / F_moe, with S = switch, T = steps - switch, F the training FLOPs per token."""
    f_dense = GPT(part1_size(vocab_size)).flops_per_token(100)
    f_moe = GPT(moe_config(vocab_size)).flops_per_token(100)
    return round(steps - switch + switch * f_dense / f_moe)


def dense_steps(vocab_size: int, steps: int, switch: int) -> int:
    """Steps of the dense model that cost as much as the upcycled arm: S + T * F_moe / F_dense."""
    f_dense = GPT(part1_size(vocab_size)).flops_per_token(100)
    f_moe = GPT(moe_config(vocab_size)).flops_per_token(100)
    return round(switch + (steps - switch) * f_moe / f_dense)


def phase1_path(work: Path, seed: int, switch: int, steps: int) -> Path:
    """The dense run stopped at `switch` inside a schedule of `steps` (both in the name: another schedule is
    another checkpoint)."""
    return work / "upcycling" / f"dense-step{switch}-of{steps}-seed{seed}.pt"


def wait_for(path: Path, what: str, out: Path, seed: int) -> None:
    """Wait for `path`, which another process of this study is making; fail clearly when nobody is."""
    if path.is_file():
        return
    if (out / "runs" / "phase1" / f"seed{seed}.json").is_file() and what == "checkpoint":
        raise SystemExit(f"phase 1 of seed {seed} is done (its run file is in {str(out)!r}) but its checkpoint "
                         f"{str(path)!r} is not in --work; delete that run file to train phase 1 again")
    print(f"waiting for {what} {path} (another process is training phase 1 of seed {seed})", flush=True)
    while not path.is_file():
        time.sleep(5)


class Recorder:
    """The on_eval callback of a run: the fixed-window val loss every CURVE_EVERY steps (and at the end),
    the experts' spread at every evaluation."""

    def __init__(self, model: GPT, curve, last_step: int, every: int = CURVE_EVERY):
        self.model, self.curve, self.last_step, self.every = model, curve, last_step, every
        self.evals: list[dict] = []
        self.spread: list[dict] = []

    def __call__(self, record: dict, history) -> None:
        step = record["step"]
        if step % self.every == 0 or step == self.last_step:
            self.evals.append({"step": step, "val_loss": windows_loss(self.model, *self.curve)})
        if self.model.config.n_expert > 0:
            self.spread.append({"step": step, "spread": [round(v, 5) for v in expert_spread(self.model)]})


def run_arm(arm: str, seed: int, data, vocab_size: int, protocol: Protocol, args, curve, whole) -> dict:
    device = torch.device(args.device)
    train = TrainConfig(lr=protocol.lr, seed=seed)
    switch = args.switch_step
    steps = {"scratch": scratch_steps(vocab_size, protocol.steps, switch),
             "dense-same-flops": dense_steps(vocab_size, protocol.steps, switch)}.get(arm, protocol.steps)
    config = protocol.corpus_config()
    config = type(config)(**{**config.to_dict(), "steps": steps,
                                 "eval_interval": math.gcd(EVAL_EVERY, args.curve_every)})
    resume, optimizer, until, checkpoint = None, None, None, None
    if arm in ("phase1", "scratch", "dense-same-flops"):  # from random weights, on a schedule of their own
        torch.manual_seed(seed)
        model = GPT(moe_config(vocab_size) if arm == "scratch" else part1_size(vocab_size)).to(device)
        if arm == "phase1":  # saved under a temporary name: the file appears whole, at step `switch` only
            until, checkpoint = switch, phase1_path(args.work, seed, switch, steps).with_suffix(".partial")
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = phase1_path(args.work, seed, switch, protocol.steps)
        wait_for(path, "checkpoint", args.out, seed)
        if arm == "dense":
            torch.manual_seed(seed)
            model, resume = GPT(part1_size(vocab_size)).to(device), path
        else:
            model, optimizer, resume = upcycle_checkpoint(
                path, train, N_EXPERT, TOP_K, optimizer_state="fresh" if arm == "upcycled-fresh" else "carry",
                seed=seed, map_location=device, aux_loss_weight=0.01, z_loss_weight=0.001)
    recorder = Recorder(model, curve, until or steps, args.curve_every)
    if resume is not None and model.config.n_expert > 0:
        recorder(resume.history.evals[-1], None)  # the spread right after upcycling (0 for copies)
    run = train_corpus(model, data, train, config, DistContext(device=device), optimizer=optimizer, resume=resume,
                       checkpoint=checkpoint, on_eval=recorder, progress=False, until=until)
    if checkpoint is not None:
        os.replace(checkpoint, phase1_path(args.work, seed, switch, steps))
    moe = run.history.moe
    record = {
        "model": arm, "seed": seed, "config": asdict(model.config), "protocol": asdict(protocol),
        "steps": until or steps, "params": model.num_params(), "active_params": model.num_active_params(),
        "flops_per_token": model.flops_per_token(100), "evals": recorder.evals, "spread": recorder.spread,
        "train_loss": [round(v, 4) for v in run.history.loss], "train_seconds": round(run.train_seconds, 2),
        "entropy": [round(statistics.fmean(r["entropy"]), 4) for r in moe],
        "imbalance": [round(statistics.fmean(imbalance(s) for s in r["share"]), 4) for r in moe],
        "machine": machine(device),
    }
    if arm != "phase1":
        record["final"] = {"val_loss": windows_loss(model, *whole)}
    if seed == args.seeds[0] and arm in ("dense", "upcycled"):  # for --timing
        save_weights(weights_path(args.work / "upcycling", arm, seed), model)
    return record


def with_phase1(record: dict, phase1: dict, switch: int) -> dict:
    """A continued arm's curve with phase 1's points before it (the same run up to step `switch`)."""
    before = [e for e in phase1["evals"] if e["step"] < switch]
    own = [e for e in record["evals"] if e["step"] >= switch]
    if not own or own[0]["step"] > switch:
        before += [e for e in phase1["evals"] if e["step"] == switch]
    return {**record, "evals": before + own}


def summary(out: Path, switch: int = SWITCH_STEP, curve_every: int = CURVE_EVERY) -> dict:
    """OUT/runs/* (and OUT/timing-cpu.json) condensed: per run its curve (`steps`, `val_loss`), final
    whole-split loss, sizes, FLOPs, per-step train loss, router entropy and imbalance, expert spread."""
    runs = []
    for path in sorted((out / "runs").glob("*/seed*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        run = {key: r[key] for key in ("model", "seed", "params", "active_params", "flops_per_token",
                                       "train_seconds", "train_loss", "entropy", "imbalance")}
        run["train_steps"] = r["steps"]
        run["continues"] = "phase1" if r["model"] in ("dense", "upcycled", "upcycled-fresh") else None
        run["final"] = r.get("final", {})
        run["steps"] = [e["step"] for e in r["evals"]]
        run["val_loss"] = [round(e["val_loss"], 5) for e in r["evals"]]
        run["spread_steps"] = [e["step"] for e in r["spread"]]
        run["spread"] = [round(statistics.fmean(e["spread"]), 5) for e in r["spread"]]  # mean over layers
        run["machine"] = {k: r["machine"][k] for k in ("device", "threads", "cpu_capability")}
        runs.append(run)
    extras = {"protocol": {**asdict(Protocol()), "switch_step": switch, "curve_every": curve_every,
                           "curve_windows": CURVE_WINDOWS, "n_expert": N_EXPERT, "top_k": TOP_K,
                           "block_size": 100},
              "arms": list(ARMS)}
    timing = out / "timing-cpu.json"
    if timing.is_file():  # two architectures timed; every arm is one of them
        extras["timing"] = json.loads(timing.read_text(encoding="utf-8"))
        seconds = extras["timing"]["seconds_per_step"]
        seconds.update({"phase1": seconds["dense"], "dense-same-flops": seconds["dense"],
                        "scratch": seconds["upcycled"], "upcycled-fresh": seconds["upcycled"]})
    return {"runs": runs, **extras}


def summarise(out: Path, switch: int = SWITCH_STEP, curve_every: int = CURVE_EVERY) -> Path:
    """OUT's summary -> nanogpt_lib/data/studies/upcycling.json (what notebook 10 reads)."""
    return save_study("upcycling", summary(out, switch, curve_every))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studies.upcycling", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--only", nargs="+", default=None, choices=list(ARMS), help="only these arms")
    p.add_argument("--steps", type=int, default=600, help="steps of the dense schedule")
    p.add_argument("--switch-step", type=int, default=SWITCH_STEP, help="the step at which the dense run is upcycled")
    add_run_arguments(p, DEFAULT_OUT,
                      "the phase-1 checkpoints, weights for --timing and the claim files (not committed)")
    p.add_argument("--curve-every", type=int, default=CURVE_EVERY, help="the fixed-window val loss every N steps")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="score on this many validation windows instead of the whole split (a quick check)")
    p.add_argument("--timing", action="store_true", help="only time the dense and the MoE step, interleaved")
    p.add_argument("--timing-rounds", type=int, default=8)
    p.add_argument("--summarise", action="store_true", help="only condense OUT's runs into the package's summary")
    args = p.parse_args(argv)
    if args.summarise:
        summarise(args.out, args.switch_step, args.curve_every)
        return
    if args.curve_every < 1:
        raise SystemExit(f"--curve-every {args.curve_every} is not allowed: it must be a number of steps >= 1")
    if not 0 < args.switch_step < args.steps:
        raise SystemExit(f"--switch-step {args.switch_step} is not allowed: the dense run is upcycled at a step in "
                         f"1..{args.steps - 1} (before --steps {args.steps})")
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = Protocol(steps=args.steps)
    data, tokenizer = prepared_corpus(args.corpus_dir)
    vocab = len(tokenizer)
    if args.timing:
        configs = {"dense": part1_size(vocab), "upcycled": moe_config(vocab)}
        device = torch.device(args.device)
        seconds = time_steps(list(configs), configs, data, protocol, args.work / "upcycling", args.seeds[0], device,
                             args.timing_rounds)
        write_timing(args.out, seconds, device, args.timing_rounds)
        return
    curve = fixed_windows(data.val, 100, min(CURVE_WINDOWS, args.eval_windows or CURVE_WINDOWS))
    whole = fixed_windows(data.val, 100, args.eval_windows)
    switch = args.switch_step
    print(f"MoE from scratch: {scratch_steps(vocab, protocol.steps, switch)} steps (the FLOPs of {switch} dense + "
          f"{protocol.steps - switch} MoE steps)", flush=True)
    began = time.perf_counter()
    for seed in args.seeds:
        for arm in ARMS:
            if args.only is not None and arm not in args.only:
                continue
            path = args.out / "runs" / arm / f"seed{seed}.json"
            if not claim_run(path, args.work / "claims" / f"upcycling-{arm}-seed{seed}"):
                continue
            t0 = time.perf_counter()
            record = run_arm(arm, seed, data, vocab, protocol, args, curve, whole)
            if arm != "phase1":
                phase1 = args.out / "runs" / "phase1" / f"seed{seed}.json"
                if arm not in ("scratch", "dense-same-flops"):
                    wait_for(phase1, "run file", args.out, seed)
                    record = with_phase1(record, json.loads(phase1.read_text(encoding="utf-8")), switch)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record) + "\n")
            final = record.get("final", {}).get("val_loss")
            print(f"{arm:<15} seed {seed}: " + (f"val {final:.4f} (ppl {math.exp(final):.1f})" if final else "done")
                  + f" in {time.perf_counter() - t0:.0f} s [{time.perf_counter() - began:.0f} s total]", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
