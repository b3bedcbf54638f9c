"""A finished study's results, read back: the committed summary of `python -m studies.moe_vs_dense`.

The study writes one file per run (studies/results/moe_vs_dense/runs/MODEL/seedN.json, with every
step's routing) and `summarise_runs` condenses them into one summary file shipped with the package
(nanogpt_lib/data/studies/moe_vs_dense.json), so a notebook reads the results on any machine, Colab
included, without training for hours. Everything here is a plain function of that file.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .atomic import atomic_write_text
from .comparison import PairedDifference, Summary, paired_difference, summarise
from .experiments import capacity_key

STUDY_FILES = {"moe_vs_dense": "moe_vs_dense.json", "upcycling": "upcycling.json",
               "balance_scope": "balance_scope.json"}
EARLY_STEPS = 80  # per-step routing and loss kept for the first steps (where the router collapses and recovers)


def _mean_over_layers(rows: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.fmean(r) for r in rows]


def summarise_runs(runs_dir: str | Path, extras: dict | None = None) -> dict:
    """{"runs": [...], **extras} from every runs_dir/MODEL/seedN.json: per run, its curve of fixed-sample
    val losses, its final whole-split losses, its sizes and seconds, and its routing condensed to the
    evaluation steps (imbalance and dropped share averaged over the 10 steps before, mean over layers),
    the first EARLY_STEPS steps one by one, and the expert shares of the last 10 steps per layer."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/seed*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        run = {key: r[key] for key in ("model", "seed", "params", "active_params", "final", "train_seconds")}
        cfg = r["config"]
        run["config"] = {k: cfg[k] for k in ("n_expert", "top_k", "expert_hidden", "capacity_factor",
                                             "aux_loss_weight", "z_loss_weight", "expert_type", "n_shared_expert",
                                             "router_type", "bias_update_rate")}
        run["steps"] = [e["step"] for e in r["evals"]]
        run["val_loss"] = [round(e["val_loss"], 5) for e in r["evals"]]
        run["machine"] = {k: r["machine"][k] for k in ("device", "threads", "cpu_capability")}
        run["early_train_loss"] = [round(v, 3) for v in r["train_loss"][:EARLY_STEPS]]
        routing = r["routing"]
        if routing:
            imb = _mean_over_layers(routing["imbalance"])  # (steps,)
            dropped = _mean_over_layers(routing["dropped"])
            window = [(s, max(0, s - 10), s) for s in run["steps"] if s > 0]
            run["routing"] = {
                "imbalance": [round(statistics.fmean(imb[a:b]), 4) for _, a, b in window],
                "dropped": [round(statistics.fmean(dropped[a:b]), 5) for _, a, b in window],
                "aux_loss": [round(statistics.fmean(routing["aux_loss"][a:b]), 4) for _, a, b in window],
                "early_imbalance": [round(v, 3) for v in imb[:EARLY_STEPS]],
                "early_dropped": [round(v, 4) for v in dropped[:EARLY_STEPS]],
                "final_share": [[round(v, 4) for v in layer] for layer in routing["final_share"]],
                "final_imbalance_per_layer": [round(statistics.fmean(col), 3)
                                              for col in zip(*routing["imbalance"][-10:], strict=True)],
            }
        runs.append(run)
    return {"runs": runs, **(extras or {})}


@dataclass(frozen=True)
class Study:
    """The summary of a study: runs, and whatever the analysis added (baselines, timing, specialisation)."""

    data: dict

    @property
    def runs(self) -> list[dict]:
        return self.data["runs"]

    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.runs})

    def with_seeds(self, seeds: Sequence[int]) -> Study:
        """The same study with only the runs of `seeds` (to compare models on the seeds they all have)."""
        keep = set(seeds)
        return Study({**self.data, "runs": [r for r in self.runs if r["seed"] in keep]})

    def common_seeds(self, models: Sequence[str]) -> list[int]:
        """The seeds every one of `models` has a run for."""
        return sorted(set.intersection(*(set(self.of(m)) for m in models)))

    def of(self, model: str) -> dict[int, dict]:
        """{seed: run} of one model."""
        found = {r["seed"]: r for r in self.runs if r["model"] == model}
        if not found:
            raise KeyError(f"model {model!r} has no runs in this study; it has {self.models()}")
        return found

    def final(self, model: str, key: str = "val_loss") -> dict[int, float]:
        """{seed: final whole-split value} (key 'val_loss', or 'val_loss_train_capacity')."""
        return {seed: run["final"][key] for seed, run in self.of(model).items() if key in run["final"]}

    def summary(self, model: str) -> Summary:
        return summarise(list(self.final(model).values()))

    def dropped(self, model: str) -> float:
        """Share of routing choices over capacity in the last 10 training steps, mean over seeds."""
        return statistics.fmean(r["routing"]["dropped"][-1] for r in self.of(model).values())

    def peak_dropped(self, model: str) -> float:
        """The largest such share of one of the first EARLY_STEPS steps, mean over seeds."""
        return statistics.fmean(max(r["routing"]["early_dropped"]) for r in self.of(model).values())

    def versus(self, model: str, baseline: str = "dense") -> PairedDifference:
        return paired_difference(self.final(model), self.final(baseline))

    def curve(self, model: str) -> tuple[list[int], list[float], list[float]]:
        """(steps, mean val loss over seeds, its standard error) of the fixed-sample evaluations."""
        runs = list(self.of(model).values())
        steps = runs[0]["steps"]
        means, ses = [], []
        for i in range(len(steps)):
            s = summarise([r["val_loss"][i] for r in runs])
            means.append(s.mean)
            ses.append(0.0 if math.isnan(s.se) else s.se)
        return steps, means, ses

    def seconds_per_step(self, model: str) -> float | None:
        """The interleaved timing's median step time (`timing`), else None."""
        timing = self.data.get("timing")
        return None if timing is None else timing["seconds_per_step"].get(model)

    def cost(self, model: str, steps: Sequence[int], unit: str = "flops") -> list[float]:
        """Training cost of `model`'s first `steps` steps, in FLOPs or seconds (the interleaved timing).

        A run that `continues` another (the upcycling study's arms continue its dense `phase1`) paid that run's
        cost per step up to `protocol["switch_step"]` and its own after it; any other run its own throughout."""
        if unit not in ("flops", "seconds"):
            raise ValueError(f"unit={unit!r} is not known; choose 'flops' or 'seconds'")
        tokens = self.data["protocol"]["batch_size"] * self.data["protocol"]["block_size"]

        def per_step(name: str) -> float:
            if unit == "flops":
                return next(iter(self.of(name).values()))["flops_per_token"] * tokens
            seconds = self.seconds_per_step(name)
            if seconds is None:
                raise KeyError(f"no step time for {name!r} in this study's timing")
            return seconds

        own = per_step(model)
        run = next(iter(self.of(model).values()))
        if run.get("continues") is None:  # one model throughout
            return [s * own for s in steps]
        switch, before = self.data["protocol"]["switch_step"], per_step(run["continues"])
        return [min(s, switch) * before + max(0, s - switch) * own for s in steps]

    def table(self, models: Sequence[str], baseline: str = "dense") -> list[dict]:
        """Per model: parameters, seeds, mean final val loss ± SE, and the paired difference to `baseline`."""
        rows = []
        for model in models:
            run = next(iter(self.of(model).values()))
            row = {"model": model, "params": run["params"], "active_params": run["active_params"],
                   "val_loss": self.summary(model)}
            row["difference"] = None if model == baseline else self.versus(model, baseline)
            rows.append(row)
        return rows


    def capacity_grid(self, n_experts: Sequence[int], factors: Sequence[float | None]) -> list[CapacityCell]:
        """One cell per (number of experts, training capacity factor) of the study's capacity grid that has
        runs, in the order given; each compared with the dropless model of the same number of experts."""
        cells = []
        known = set(self.models())
        for n_expert in n_experts:
            for factor in factors:
                model = capacity_key(n_expert, factor)
                if model not in known:
                    continue
                with_capacity = self.final(model, "val_loss_train_capacity")
                cells.append(CapacityCell(
                    n_expert=n_expert, factor=factor, model=model,
                    dropped=self.dropped(model), peak_dropped=self.peak_dropped(model),
                    val_loss=self.summary(model),
                    val_loss_train_capacity=summarise(list(with_capacity.values())) if with_capacity else None,
                    versus_dropless=None if factor is None else paired_difference(
                        self.final(model), self.final(capacity_key(n_expert, None))),
                    capacity_at_eval=paired_difference(with_capacity, self.final(model)) if with_capacity else None,
                ))
        return cells


@dataclass(frozen=True)
class CapacityCell:
    """One model of the capacity grid: top-2 of half width, `n_expert` experts, training capacity `factor`."""

    n_expert: int
    factor: float | None  # None: dropless
    model: str
    dropped: float  # share of routing choices over capacity in the last 10 training steps, mean over seeds
    peak_dropped: float  # the largest such share of one of the first EARLY_STEPS steps, mean over seeds
    val_loss: Summary  # final whole-split loss, evaluated without a capacity limit
    val_loss_train_capacity: Summary | None  # the same, evaluated with the training capacity
    versus_dropless: PairedDifference | None  # val_loss minus the dropless model's, seed by seed
    capacity_at_eval: PairedDifference | None  # evaluated with the training capacity minus without, same runs


def format_capacity_grid(cells: Sequence[CapacityCell]) -> str:
    """The capacity grid as aligned text, one line per model."""
    lines = [f"{'E':>3} {'factor':>8} {'seeds':>5} {'dropped':>8} {'peak':>7}  {'val loss ± SE':<16} "
             f"{'minus dropless ± SE':<20} {'wins':<5} {'capacity at eval ± SE':<21}"]
    for c in cells:
        factor = "dropless" if c.factor is None else f"{c.factor:g}"
        d, e = c.versus_dropless, c.capacity_at_eval
        versus = "" if d is None else f"{d.mean:+.4f} ± {d.se:.4f}"
        wins = "" if d is None else f"{d.wins}/{d.n}"
        at_eval = "" if e is None else f"{e.mean:+.4f} ± {e.se:.4f}"
        lines.append(f"{c.n_expert:>3} {factor:>8} {c.val_loss.n:>5} {c.dropped:>8.2%} {c.peak_dropped:>7.1%}  "
                     f"{c.val_loss!s:<16} {versus:<20} {wins:<5} {at_eval}".rstrip())
    return "\n".join(lines)


def study_path(name: str = "moe_vs_dense") -> Path:
    if name not in STUDY_FILES:
        raise ValueError(f"study {name!r} is not known: choose one of {sorted(STUDY_FILES)}")
    return Path(str(resources.files("nanogpt_lib") / "data" / "studies" / STUDY_FILES[name]))


def save_study(name: str, summary: dict) -> Path:
    """Write a study's summary where `load_study(name)` reads it (atomically); returns the path."""
    target = study_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(summary, separators=(",", ":")) + "\n")
    print(f"{len(summary['runs'])} runs -> {target} ({target.stat().st_size / 1e3:.0f} kB)")
    return target


def load_study(name: str = "moe_vs_dense", path: str | Path | None = None) -> Study:
    """The committed summary of study `name` (or the summary file at `path`)."""
    path = study_path(name) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study summary {str(path)!r} does not exist; run the study and its --summarise")
    return Study(json.loads(path.read_text(encoding="utf-8")))


def format_table(rows: list[dict], baseline: str = "dense") -> str:
    """The table as aligned text: model, total / active parameters, val loss ± SE, difference ± SE, wins."""
    width = max(16, *(len(r["model"]) for r in rows))
    lines = [f"{'model':<{width}} {'params':>9} {'active':>9}  {'val loss ± SE':<17} "
             f"{'minus ' + baseline + ' ± SE':<18} wins"]
    for r in rows:
        d = r["difference"]
        diff = "" if d is None else f"{d.mean:+.4f} ± {d.se:.4f}"
        wins = "" if d is None else f"{d.wins}/{d.n}"
        lines.append(f"{r['model']:<{width}} {r['params']:>9,} {r['active_params']:>9,}  "
                     f"{r['val_loss'].mean:.4f} ± {r['val_loss'].se:.4f}  {diff:<18} {wins}")
    return "\n".join(lines)


def markdown_table(rows: list[dict], baseline: str = "dense") -> str:
    """The table for documentation: model, parameters, val loss ± SE, difference to the baseline ± SE, wins."""
    lines = [f"| model | total params | active | seeds | val loss ± SE | minus {baseline} ± SE | wins |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["difference"]
        diff, wins = ("", "") if d is None else (f"{d.mean:+.4f} ± {d.se:.4f}", f"{d.wins}/{d.n}")
        lines.append(f"| {r['model']} | {r['params']:,} | {r['active_params']:,} | {r['val_loss'].n} | "
                     f"{r['val_loss'].mean:.4f} ± {r['val_loss'].se:.4f} | {diff} | {wins} |")
    return "\n".join(lines)


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def balance_scope_markdown(found: dict, last_steps: int = 100) -> str:
    """The summary of `python -m studies.balance_scope` as Markdown tables: per arm mean ± std over seeds,
    then the paired differences (global - micro_batch, seed by seed), then each arm against Part 2's own
    runs (`last_steps`: the training log's tail the study averaged)."""
    names = {"val_loss": ("val loss", 4), "imbalance_val_global": ("imbalance, val global batch", 3),
             "imbalance_val_micro": ("imbalance, val micro-batches", 3),
             "imbalance_train_micro": ("imbalance, train micro-batch", 3),
             "imbalance_train_micro_last": (f"same, last {last_steps} steps", 3),
             "token_purity": ("token purity", 3), "token_purity_shuffled": ("purity, shuffled", 3),
             "nmi_class": ("NMI class", 3), "nmi_genre": ("NMI genre", 3)}
    arms = list(found["arms"])
    lines = ["| measure (mean ± std over seeds) | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for key, (label, digits) in names.items():
        cells = [f"{_number(found['arms'][a][key]['mean'], digits)} ± {_number(found['arms'][a][key]['std'], digits)}"
                 for a in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for pair in found["paired"].values():
        lines += ["", f"| {pair['global']} − {pair['micro_batch']}, seeds {pair['seeds']} | mean ± std | "
                  "lower under global | per seed |", "|---|---|---|---|"]
        for key, (label, digits) in names.items():
            d = pair["difference"][key]
            seeds = ", ".join(f"{v:+.{digits}f}" for v in d["per_seed"].values())
            lines.append(f"| {label} | {d['mean']:+.{digits}f} ± {_number(d['std'], digits)} | "
                         f"{d['global_lower']}/{d['n']} | {seeds} |")
    for scope, ref in (found["part2_reference"] or {}).items():
        seeds = ", ".join(f"{v['difference']:+.4f}" for v in ref["per_seed"].values())
        same = ", ".join(str(v["identical_steps"]) for v in ref["per_seed"].values())
        lines += ["", f"{scope} minus Part 2's moe-8x2 (one batch a step), val loss: {ref['mean']:+.4f} ± "
                  f"{_number(ref['std'], 4)} over {ref['n']} seeds ({seeds}); the same training loss for the "
                  f"first {same} steps"]
    return "\n".join(lines)
