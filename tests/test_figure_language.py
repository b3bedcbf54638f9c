"""The figures' language switch: English by default, and with `plots.set_language("pt-br")` every figure the
notebooks draw comes out with no English words left (the Portuguese edition's figures)."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from nanogpt_lib import plots, study_plots  # noqa: E402
from nanogpt_lib.config import GPTConfig  # noqa: E402
from nanogpt_lib.corpus_train import CorpusConfig  # noqa: E402
from nanogpt_lib.experiments import compare_on_corpus  # noqa: E402
from nanogpt_lib.figure_language import PT_BR, translate  # noqa: E402
from nanogpt_lib.moe import route  # noqa: E402
from nanogpt_lib.real_models import table  # noqa: E402
from nanogpt_lib.specialisation import Specialisation  # noqa: E402
from nanogpt_lib.study_results import load_study  # noqa: E402
from nanogpt_lib.tokens import tokens_in_memory  # noqa: E402
from nanogpt_lib.training import History, TrainConfig  # noqa: E402

# Words of the English figures that Portuguese does not share: one left in a Portuguese figure is a miss.
ENGLISH = re.compile(
    r"\b(the|of|and|with|per|vs|over|after|each|from|into|without|experts?|router|steps?|training|train|validation"
    r"|share|dropped|layer|choices|seconds|time|parameters|width|mean|balanced|busiest|fair|seats|received|kept"
    r"|probability|process|rows|more|params|shared|active|released|models?|run|seeds?|at|by|in|on|its|every|one"
    r"|first|heads?|position|positions|same|matrix|weight|input|target|dense|carried|fresh|upcycled|balancing"
    r"|continued|scratch|class|genre|capacity|factor|epoch|snapshot|start)\b")


def texts(fig) -> list[str]:
    """Every text of `fig` as drawn (drawing regenerates tick labels from their formatters)."""
    fig.canvas.draw()
    found = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
    plt.close(fig)
    return found


def test_english_is_the_default_and_the_setting_is_checked():
    assert plots.get_language() == "en"
    with plots.language("pt-br"):
        assert plots.get_language() == "pt-br"
    assert plots.get_language() == "en"
    with pytest.raises(ValueError, match=r"figure language 'pt' is not available; choose one of en, pt-br"):
        plots.set_language("pt")
    assert plots.get_language() == "en"


def test_the_table_carries_the_computed_values():
    assert translate("MoE layer 3: share per expert", "pt-br") == "Camada MoE 3: fração por especialista"
    assert translate("capacity = 25 seats", "pt-br") == "capacidade = 25 vagas"
    assert translate("fine-grained + shared (5 seeds)", "pt-br") == "granularidade fina + compartilhado (5 sementes)"
    assert translate("capacity = 25 seats", "en") == "capacity = 25 seats"
    for pattern, _ in PT_BR:
        re.compile(pattern)


def small_moe_results():
    rng = np.random.default_rng(0)
    data = tokens_in_memory(rng.integers(0, 64, 400), rng.integers(0, 64, 60), "toy", 64)
    base = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    configs = {"dense": GPTConfig(**base),
               "moe": GPTConfig(**base, n_expert=4, top_k=2, expert_hidden=32, capacity_factor=1.0),
               "bias": GPTConfig(**base, n_expert=4, top_k=2, expert_hidden=32, router_type="sigmoid",
                                 bias_update_rate=0.01, aux_loss_weight=0.0)}
    corpus = CorpusConfig(steps=4, batch_size=4, eval_interval=2, eval_batches=1, warmup_steps=1)
    return compare_on_corpus(configs, data, TrainConfig(lr=3e-3, seed=0), corpus, progress=False)


def every_figure():
    """(name, figure) for each figure function the notebooks call, on small or shipped inputs."""
    part1 = GPTConfig(block_size=100, vocab_size=4096, n_layer=4, n_head=4, n_embd=128)
    moe = GPTConfig(**{**part1.__dict__, "n_expert": 8, "top_k": 2, "capacity_factor": 1.25})
    fine = GPTConfig(**{**part1.__dict__, "n_expert": 30, "top_k": 6, "n_shared_expert": 2, "expert_type": "swiglu",
                        "router_type": "sigmoid", "capacity_factor": None})
    yield "gpt diagram", plots.plot_gpt_diagram(part1)
    yield "moe diagram", plots.plot_moe_diagram(moe)
    yield "fine moe diagram", plots.plot_moe_diagram(fine)
    yield "params vs width", plots.plot_params_vs_width(vocab_size=4096, block_size=100, widths=[64, 128],
                                                        depths=[2, 4])
    yield "shift", plots.plot_shift(["a", "b", "c", "d"], ["b", "c", "d", "-1"], first=2, last=1)
    yield "routing", plots.plot_routing(route(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), 1, capacity=1))
    yield "released", plots.plot_active_vs_total(table())
    yield "exchange", plots.plot_token_exchange([torch.tensor([5, 3, 2, 6]), torch.tensor([1, 7, 4, 4])])
    history = History(epoch=[1, 2], loss=[5.0, 4.0], quarters=[{"epoch": 2, "eval_loss": 4.1, "eval_perplexity": 60.3}],
                      evals=[{"step": 0, "train_loss": 6.0, "val_loss": 6.1, "lr": 0.0}])
    yield "history", plots.plot_history(history, vocab_size=64)
    yield "corpus history", plots.plot_corpus_history(history)
    results = small_moe_results()
    yield "val perplexity", plots.plot_val_perplexity(results)
    yield "expert share", plots.plot_expert_share(results[1].history, title="fine-grained + shared, balancing loss")
    yield "moe training", plots.plot_moe_training(results[1].history)
    yield "balance", plots.plot_balance(results)
    yield "bias", plots.plot_expert_bias(results[2].history, title="balancing bias per expert (u = 0.01)")
    study = load_study("moe_vs_dense")
    labels = {"dense": "dense", "moe-8x2": "MoE 8 x top-2 (half width)"}
    yield "curves", study_plots.plot_study_curves(study, ["dense", "moe-8x2"], labels)
    yield "paired", study_plots.plot_paired_differences(study, ["moe-8x2"], labels=labels)
    yield "early vs final", study_plots.plot_early_vs_final(study, ["dense", "moe-8x2"], labels=labels)
    yield "balance runs", study_plots.plot_balance_runs(study, ["moe-8x2-aux0", "moe-8x2"], ceiling=4,
                                                        labels={"moe-8x2": "balancing weight 0.01"})
    yield "shares", study_plots.plot_expert_shares(study, "moe-8x2-aux0", seed=0)
    spec = study.data["specialisation"]["moe-8x2"]
    for by, layer in (("class", 0), ("genre", 3)):
        title = f"MoE 8 x top-2, layer {layer}: enrichment of first choices by {by}"
        yield f"by {by}", study_plots.plot_specialisation(Specialisation.from_dict(spec[f"by_{by}"]), layer, title)
    upcycling = load_study("upcycling")
    arms = ["dense", "upcycled", "upcycled-fresh", "scratch"]
    labels = {"dense": "(a) dense, continued", "upcycled": "(b) upcycled, AdamW carried",
              "upcycled-fresh": "(b') upcycled, fresh AdamW", "scratch": "(c) MoE from scratch, same FLOPs"}
    yield "upcycling", study_plots.plot_upcycling_curves(upcycling, arms, labels=labels)
    yield "divergence", study_plots.plot_expert_divergence(upcycling, arms[1:], labels=labels)


def test_every_figure_has_no_english_word_left_in_portuguese():
    with plots.language("pt-br"):
        drawn = list(every_figure())
        left = {name: [t for t in texts(fig) if ENGLISH.search(t) and not t.startswith("All-to-all")]
                for name, fig in drawn}
    assert {name: words for name, words in left.items() if words} == {}
    assert len(drawn) >= 24


def test_the_english_figures_are_unchanged_by_the_switch():
    english = texts(plots.plot_moe_diagram(GPTConfig(n_expert=4, top_k=2, block_size=16, vocab_size=64, n_layer=1,
                                                     n_head=2, n_embd=16)))
    assert any("routed experts" in t for t in english) and not any("especialista" in t for t in english)
