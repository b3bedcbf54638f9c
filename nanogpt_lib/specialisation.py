"""Which tokens go to which expert: routing measured by token class and by genre.

A trained MoE's router is a linear map of the hidden state, so what it can pick up is whatever the
hidden state makes easy to separate. This module records each token's first choice (its top-1
expert) in every MoE layer and counts it against a label of the token: a class of the token's own
text (punctuation, function word, capitalised word, verb ending, ...) or the genre of the work it
comes from. The table of counts n[c, e] is read as an *enrichment*

    enrichment[c, e] = P(expert e | class c) / P(expert e)

which is 1 when class c goes to expert e exactly as often as all tokens do (no specialisation), above
1 when the expert prefers the class. A single number per layer is the share of the class's entropy
the expert explains, the normalised mutual information  I(class; expert) / H(class)  (0: the expert
says nothing about the class, 1: it determines it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .evaluation import eval_mode
from .moe import MoE

# The most frequent Portuguese function words (articles, prepositions and their contractions,
# pronouns, conjunctions, auxiliary forms): the words a language model sees most and that carry grammar.
FUNCTION_WORDS = frozenset("""
a o as os um uma uns umas de do da dos das em no na nos nas num numa ao aos à às por pelo pela pelos pelas
para pra com sem sob sobre entre até após desde contra e ou mas nem que se como quando porque pois porém
logo também já não sim mais menos muito pouco tão tanto eu tu ele ela nós vós eles elas me te lhe nos vos
lhes se mim ti si comigo contigo consigo meu minha meus minhas teu tua teus tuas seu sua seus suas nosso
nossa nossos nossas este esta estes estas esse essa esses essas aquele aquela aqueles aquelas isto isso
aquilo quem qual quais cujo cuja onde lá cá aqui ali aí é era foi ser ter há havia tinha são estava está
""".split())
# endings of Portuguese verb forms (imperfect, preterite, infinitive, participle, gerund, conditional)
VERB_ENDING = re.compile(r"(ava|avam|ávamos|ia|iam|íamos|ou|aram|eram|iram|ei|ar|er|ir|ado|ada|ados|adas|ido|"
                         r"ida|idos|idas|ando|endo|indo|aria|eria|iria|ará|erá|irá)$")
CLASSES = ("whitespace", "punctuation", "number", "capitalised", "function word", "verb ending",
           "other word start", "other word piece")


def token_class(text: str) -> str:
    """The class of one token's text (as the tokenizer decodes it, a leading space marks a word start)."""
    stripped = text.strip()
    if not stripped:
        return "whitespace"
    if all(not ch.isalnum() for ch in stripped):
        return "punctuation"
    if any(ch.isdigit() for ch in stripped):
        return "number"
    starts_word = text[:1].isspace()
    if starts_word and stripped[:1].isupper():
        return "capitalised"
    if starts_word and stripped.lower() in FUNCTION_WORDS:
        return "function word"
    if not starts_word and stripped.isalpha() and VERB_ENDING.search(stripped.lower()):
        return "verb ending"
    return "other word start" if starts_word else "other word piece"


def vocabulary_classes(tokenizer) -> np.ndarray:
    """(V,) the class index (into CLASSES) of every token id of `tokenizer`; special tokens such as
    the end-of-text marker between works count as whitespace (they separate, like a blank line)."""
    index = {name: i for i, name in enumerate(CLASSES)}
    special = set(tokenizer.all_special_ids)
    return np.array([index["whitespace" if i in special else token_class(tokenizer.decode([i]))]
                     for i in range(len(tokenizer))], dtype=np.int64)


@torch.no_grad()
def first_choices(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 16) -> list[torch.Tensor]:
    """Per MoE layer, (W * T,) the top-1 expert of every token of the windows x (W, T), in eval mode.

    The router is called again on the hidden state each MoE layer receives (a forward pre-hook), so
    the model's own forward is unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        raise ValueError("the model has no MoE layer: nothing is routed")
    found: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(i: int):
        def record(module: MoE, args) -> None:
            h = args[0]  # (B, T, C)
            found[i].append(module.route(h.reshape(-1, h.shape[-1])).experts[:, 0].cpu())  # (B*T,)
        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks) for chunks in found]


@dataclass(frozen=True)
class Specialisation:
    """Counts of first choices by label, per MoE layer: counts[layer][label, expert]."""

    labels: tuple[str, ...]
    counts: list[np.ndarray]  # per layer (L, E)

    def enrichment(self, layer: int) -> np.ndarray:
        """(L, E) P(expert | label) / P(expert); NaN for a label with no tokens."""
        n = self.counts[layer].astype(np.float64)
        expert_share = n.sum(axis=0) / n.sum()  # (E,)
        with np.errstate(invalid="ignore", divide="ignore"):
            given = n / n.sum(axis=1, keepdims=True)  # (L, E)
            return given / expert_share

    def strongest(self, layer: int, count: int = 3, min_share: float = 0.0) -> list[tuple[str, int, float, float]]:
        """The `count` largest enrichments of a layer, largest first, among labels holding at least `min_share`
        of the tokens: (label, expert, enrichment, share of the label's tokens that go to that expert)."""
        n = self.counts[layer].astype(np.float64)
        enrich = self.enrichment(layer)
        cells = [(float(enrich[i, e]), label, e, float(n[i, e] / n[i].sum()))
                 for i, label in enumerate(self.labels) if n[i].sum() > 0 and n[i].sum() >= min_share * n.sum()
                 for e in range(n.shape[1])]
        cells.sort(key=lambda c: -c[0])
        return [(label, e, value, share) for value, label, e, share in cells[:count]]

    def normalised_mutual_information(self, layer: int) -> float:
        """I(label; expert) / H(label) of one layer's counts."""
        p = self.counts[layer].astype(np.float64)
        p = p / p.sum()
        p_label, p_expert = p.sum(axis=1), p.sum(axis=0)
        nz = p > 0
        mutual = float((p[nz] * np.log(p[nz] / np.outer(p_label, p_expert)[nz])).sum())
        entropy = -float((p_label[p_label > 0] * np.log(p_label[p_label > 0])).sum())
        return mutual / entropy if entropy > 0 else math.nan

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "counts": [c.tolist() for c in self.counts]}

    @classmethod
    def from_dict(cls, d: dict) -> Specialisation:
        return cls(tuple(d["labels"]), [np.asarray(c, dtype=np.int64) for c in d["counts"]])


def count_by_label(choices: Sequence[torch.Tensor], labels: np.ndarray, names: Sequence[str],
                   n_expert: int) -> Specialisation:
    """Specialisation counts from first choices (per layer, (N,)) and a label index per token (N,)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must be indices in [0, {len(names)}) (one per name), "
                         f"got {labels.min()}..{labels.max()}")
    counts = []
    for experts in choices:
        experts = experts.numpy().ravel()
        if experts.shape != labels.shape:
            raise ValueError(f"{experts.shape[0]} routed tokens but {labels.shape[0]} labels")
        if experts.size and (experts.min() < 0 or experts.max() >= n_expert):
            raise ValueError(f"expert ids must be in [0, n_expert={n_expert}), got {experts.min()}..{experts.max()}")
        flat = np.bincount(labels * n_expert + experts, minlength=len(names) * n_expert)
        counts.append(flat.reshape(len(names), n_expert))
    return Specialisation(tuple(names), counts)


def token_purity(choices: Sequence[torch.Tensor], token_ids: torch.Tensor) -> list[float]:
    """Per layer, the share of tokens whose top-1 expert is the one their token id goes to most often:
    1.0 would mean routing is a lookup table of the token id, whatever the context."""
    ids = token_ids.reshape(-1).numpy()
    purities = []
    for experts in choices:
        e = experts.numpy()
        n_expert = int(e.max()) + 1
        table = np.bincount(ids * n_expert + e, minlength=(int(ids.max()) + 1) * n_expert).reshape(-1, n_expert)
        purities.append(float(table.max(axis=1).sum() / len(ids)))
    return purities


def genre_labels(document_tokens: Sequence[Sequence], split: str,
                 positions: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The genre (the folder part of a document name such as 'romance/domCasmurro.txt') of the tokens
    at `positions` of a split, from a token folder's `meta.document_tokens`; returns (index (N,), names)."""
    column = {"train": 1, "val": 2}[split]
    genres = sorted({str(name).split("/", 1)[0] for name, *_ in document_tokens})
    ends, owner = [], []
    total = 0
    for row in document_tokens:
        total += int(row[column])
        ends.append(total)
        owner.append(genres.index(str(row[0]).split("/", 1)[0]))
    where = np.searchsorted(np.asarray(ends), np.asarray(positions), side="right")
    if (np.asarray(positions) < 0).any() or (where >= len(ends)).any():
        raise ValueError(f"positions must be in [0, {total}) (the tokens of the {split} split), got "
                         f"{int(np.min(positions))}..{int(np.max(positions))}")
    return np.asarray(owner)[where], genres
