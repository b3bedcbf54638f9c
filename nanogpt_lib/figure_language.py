"""The words of the course's figures in the reader's language.

The figures are drawn in English (`plots.py`, `study_plots.py`); `localise` then rewrites every text of a
finished Figure (titles, axis labels, legends, colour-bar labels, annotations, tick labels, the boxes of the
diagrams) through the language's table. A table is an ordered list of (English pattern, replacement) pairs,
applied one after another with `re.sub`; a pattern's groups carry what the code computed (numbers, names),
so a title built from an f-string is translated whatever its values:

    r"Load per expert"                    -> "Carga por especialista"
    r"MoE layer (\\d+): share per expert"  -> r"Camada MoE \\1: fração por especialista"

Patterns are written for whole phrases, longest first where one phrase contains another, so that a word is
never translated out of its phrase. The terms follow notebooks/translations/pt-br/glossary.yml. Numbers keep
the decimal point of the printed outputs. English ("en") is the drawing language: no table, no change.
"""

from __future__ import annotations

import re
from functools import cache

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedFormatter, FuncFormatter

LANGUAGES = ("en", "pt-br")

# (pattern, replacement): the Brazilian Portuguese edition's figures.
PT_BR: tuple[tuple[str, str], ...] = (
    # --- plots.plot_params_vs_width
    (r"Parameters vs width \(vocab ([\d,]+), context (\d+)\); dashed: without embeddings",
     r"Parâmetros × largura (vocabulário \1, contexto \2); tracejado: sem embeddings"),
    (r"n_embd \(width of the residual stream\)", "n_embd (largura do fluxo residual)"),
    (r"^parameters \(log scale\)$", "parâmetros (escala log)"),
    # --- plot_history / plot_corpus_history
    (r"^training loss \(dropout on\)$", "loss de treino (dropout ligado)"),
    (r"^eval loss at 25 % points$", "loss de avaliação nos pontos de 25 %"),
    (r"^training perplexity$", "perplexidade de treino"),
    (r"^eval perplexity$", "perplexidade de avaliação"),
    (r"^epoch$", "época"),
    (r"^cross-entropy \(nats/token\)$", "entropia cruzada (nats/token)"),
    (r"^Perplexity = exp\(loss\)$", "Perplexidade = exp(loss)"),
    (r"^perplexity \(log scale\)$", "perplexidade (escala log)"),
    (r"^train \(per step, dropout on\)$", "treino (por passo, dropout ligado)"),
    (r"^train \(eval mode, fixed batches\)$", "treino (modo de avaliação, batches fixos)"),
    (r"^validation \(eval mode, fixed batches\)$", "validação (modo de avaliação, batches fixos)"),
    (r"^optimisation step$", "passo de otimização"),
    (r"^Corpus run: loss$", "Treino no corpus: loss"),
    # --- plot_capacity
    (r"^eval loss after training \(nats/token\)$", "loss de avaliação após o treino (nats/token)"),
    (r"^Capacity: loss vs size$", "Capacidade: loss × tamanho"),
    (r"^training time \(seconds, this machine\)$", "tempo de treino (segundos, nesta máquina)"),
    (r"^Cost: loss vs time$", "Custo: loss × tempo"),
    # --- plot_positions
    (r"\(argmax right at (\d+)% of positions\)", r"(argmax certo em \1% das posições)"),
    (r"\(uniform guess\)", "(chute uniforme)"),
    (r"^position t \(predicting token t\+1\)$", "posição t (prevendo o token t+1)"),
    (r"^p\(true next token\) \(log scale\)$", "p(próximo token verdadeiro) (escala log)"),
    (r"^p\(true next token\)$", "p(próximo token verdadeiro)"),
    (r"^How sure the model is of each next token of the paragraph$",
     "Quão seguro o modelo está de cada próximo token do parágrafo"),
    (r"^snapshot$", "momento"),
    (r"^start( \(|$)", r"início\1"),
    # --- plot_shift
    (r"^input$", "entrada"),
    (r"^target$", "alvo"),
    (r"^targets = inputs shifted left by one; the last target is -1 \(ignored by the loss\)$",
     "alvos = entradas deslocadas uma posição à esquerda; o último alvo é -1 (ignorado pela loss)"),
    # --- plot_routing
    (r"^router probability p$", "probabilidade p do roteador"),
    (r"^Router probabilities; 1, 2: choice rank, ✗: dropped \(top-(\d+)\)$",
     r"Probabilidades do roteador; 1, 2: ordem da escolha, ✗: descartada (top-\1)"),
    (r"^kept$", "mantidas"),
    (r"^dropped \(expert full\)$", "descartadas (especialista cheio)"),
    (r"^capacity = (\d+) seats$", r"capacidade = \1 vagas"),
    (r"^choices received$", "escolhas recebidas"),
    (r"^Load per expert$", "Carga por especialista"),
    (r"^expert$", "especialista"),
    # --- plot_val_perplexity
    (r": validation$", ": validação"),
    (r": train$", ": treino"),
    (r"^Train \(dashed\) and validation \(solid\) perplexity, eval mode$",
     "Perplexidade de treino (tracejada) e de validação (contínua), modo de avaliação"),
    # --- plot_expert_share, plot_moe_training, plot_balance, plot_expert_bias
    (r"^MoE layer (\d+): share per expert$", r"Camada MoE \1: fração por especialista"),
    (r"^share \(balanced: ([\d.]+)\)$", r"fração (balanceado: \1)"),
    (r"^step$", "passo"),
    (r"^layer (\d+)$", r"camada \1"),
    (r"^% of choices dropped$", "% das escolhas descartadas"),
    (r"^Dropped \(over capacity\)$", "Descartadas (acima da capacidade)"),
    (r"^1 = perfectly balanced$", "1 = balanceamento perfeito"),
    (r"^Load-balancing loss$", "Loss de balanceamento de carga"),
    (r"^Router z-loss$", "z-loss do roteador"),
    (r"^mean logsumexp²$", "média de logsumexp²"),
    (r"^busiest expert / fair share$", "especialista mais carregado / parcela justa"),
    (r"^Load imbalance \(mean over layers, (\d+)-step average\)$",
     r"Desbalanceamento de carga (média das camadas, média de \1 passos)"),
    (r"^Dropped over capacity \((\d+)-step average\)$", r"Descartadas acima da capacidade (média de \1 passos)"),
    (r"^MoE layer (\d+)$", r"Camada MoE \1"),
    (r"^bias \(one line per expert\)$", "viés (uma linha por especialista)"),
    # --- plot_gpt_diagram
    (r"positions 0\.\.T-1", "posições 0..T-1"),
    (r"\(right: one block\)", "(à direita: um bloco)"),
    (r"([\d,]+) params each,\n([\d,]+) in all", r"\1 parâmetros cada,\n\2 no total"),
    (r"weight tied to wte: 0 new params", "peso compartilhado com wte: 0 parâmetros novos"),
    (r"cross-entropy with targets\n\(the -1 positions ignored\)\n-> loss, a scalar",
     "entropia cruzada com os alvos\n(posições -1 ignoradas)\n-> loss, um escalar"),
    (r"^same matrix$", "mesma matriz"),
    (r"^GPT: ([\d,]+) parameters \(([\d,]+)-token vocabulary\)$", r"GPT: \1 parâmetros (vocabulário de \2 tokens)"),
    (r"split into heads:", "divisão em cabeças:"),
    (r"causal mask", "máscara causal"),
    (r"position t sees positions 0\.\.t", "a posição t vê as posições 0..t"),
    (r"heads side by side:", "cabeças lado a lado:"),
    (r"GELU \(tanh form\)", "GELU (forma tanh)"),
    (r"^One block: attention \((\d+) heads of (\d+)\) then MLP, pre-norm$",
     r"Um bloco: atenção (\1 cabeças de \2) e depois MLP, pre-norm"),
    # --- plot_moe_diagram
    (r"sigmoid\(x W_r\): scores\n\+ bias b \(choice only\)", "sigmoid(x W_r): pontuações\n+ viés b (só na escolha)"),
    (r"probabilities p", "probabilidades p"),
    (r"^top-(\d+) of (\d+)\nexperts ", r"top-\1 de \2\nespecialistas "),
    (r"\nweights w ", "\npesos w "),
    (r"renormalised to sum 1", "renormalizados para somar 1"),
    (r"raw score", "pontuação bruta"),
    (r"seats per expert\nno limit: N = (\d+)\n\(capacity_factor None\)\nnothing dropped",
     r"vagas por especialista\nsem limite: N = \1\n(capacity_factor None)\nnada descartado"),
    (r"seats per expert\n", "vagas por especialista\n"),
    (r"\(factor ([\d.]+)\)\nfirst choices first", r"(fator \1)\nprimeiras escolhas primeiro"),
    (r"a choice over its expert's\nseats is dropped \(adds 0\)",
     "uma escolha além das vagas\ndo especialista é descartada (soma 0)"),
    (r"^\.\.\. (\d+) more \.\.\.$", r"... mais \1 ..."),
    (r"^expert (\d+): ", r"especialista \1: "),
    (r"^(\d+) routed experts, ([\d,]+) params each\n\((\w+); coloured: one token's top-(\d+)\)$",
     r"\1 especialistas roteados, \2 parâmetros cada\n(\3; em cor: o top-\4 de um token)"),
    (r"^1 shared expert: every token, ", "1 especialista compartilhado: todo token, "),
    (r"^(\d+) shared experts: every token, ", r"\1 especialistas compartilhados: todo token, "),
    (r"w = sigmoid gate", "w = porta sigmoid"),
    (r"^h, the block's input \(before ln_2\), skips the layer$",
     "h, a entrada do bloco (antes de ln_2), pula a camada"),
    (r"^MoE layer: ([\d,]+) parameters, ([\d,]+) active per token \(top-(\d+) of (\d+)( \+ \d+ shared)?\)$",
     r"Camada MoE: \1 parâmetros, \2 ativos por token (top-\3 de \4\5)"),
    (r" \+ (\d+) shared\)$", r" + \1 compartilhados)"),
    # --- plot_active_vs_total
    (r"\n(\d+) experts, top-(\d+)", r"\n\1 especialistas, top-\2"),
    (r" \+ 1 shared$", " + 1 compartilhado"),
    (r" \+ (\d+) shared$", r" + \1 compartilhados"),
    (r"^total parameters \(billions, log scale\)$", "parâmetros totais (bilhões, escala log)"),
    (r"^active parameters per token \(billions, log scale\)$", "parâmetros ativos por token (bilhões, escala log)"),
    (r"^Released MoE models: what a token uses against what is stored$",
     "Modelos MoE publicados: o que um token usa contra o que fica guardado"),
    # --- plot_token_exchange
    (r"^process (\d+)\nits tokens' N·k\n= ([\d,]+) rows$", r"processo \1\nN·k dos seus tokens\n= \2 linhas"),
    (r"^process (\d+)\n\(experts (\d+)\.\.(\d+)\)$", r"processo \1\n(especialistas \2..\3)"),
    (r"^([\d,]+) stay$", r"\1 ficam"),
    (r"^([\d,]+) rows$", r"\1 linhas"),
    (r"^All-to-all of MoE layer (\d+): each process sends every row to its expert's owner\n"
     r"([\d,]+) of ([\d,]+) rows cross between processes; the results return the same way$",
     r"All-to-all da camada MoE \1: cada processo manda cada linha ao dono do seu especialista\n"
     r"\2 de \3 linhas passam entre processos; os resultados voltam pelo mesmo caminho"),
    # --- study_plots
    (r" \((\d+) seeds\)$", r" (\1 sementes)"),
    (r"^training tokens seen \(millions\)$", "tokens de treino vistos (milhões)"),
    (r"^training time \(s, this study's CPU timing\)$", "tempo de treino (s, tempos de CPU deste estudo)"),
    (r"^ bigram$", " bigramas"),
    (r"^validation loss \(nats per token\)$", "loss de validação (nats por token)"),
    (r"^Per token: the same windows for every model$", "Por token: as mesmas janelas para todo modelo"),
    (r"^Per second: step time measured interleaved$", "Por segundo: tempo de passo medido de forma intercalada"),
    (r"^final validation loss minus dense's \(nats per token; < 0: better\)$",
     "loss de validação final menos a do modelo denso (nats por token; < 0: melhor)"),
    (r"^final validation loss minus (.+)'s \(nats per token; < 0: better\)$",
     r"loss de validação final menos a de \1 (nats por token; < 0: melhor)"),
    (r"^Paired by seed: dots are seeds, diamonds the mean ± 1 SE$",
     "Pareado por semente: pontos são sementes, losangos a média ± 1 erro padrão"),
    (r"^E/k = (\S+): every token sends a choice to the busiest expert$",
     r"E/k = \1: todo token manda uma escolha ao especialista mais carregado"),
    (r"^training step$", "passo de treino"),
    (r"^imbalance \(busiest / fair share\)$", "desbalanceamento (mais carregado / parcela justa)"),
    (r"^Steps 1-(\d+), every step$", r"Passos 1-\1, todos os passos"),
    (r"^Whole run: mean of the 10 steps before each evaluation$",
     "Execução inteira: média dos 10 passos antes de cada avaliação"),
    (r"^MoE layer$", "camada MoE"),
    (r"^(.+), seed (\d+): share of routing choices \(fair share ([\d.]+)\)$",
     r"\1, semente \2: fração das escolhas de roteamento (parcela justa \3)"),
    (r"^share of the layer's choices$", "fração das escolhas da camada"),
    (r"^dropped share of choices$", "fração das escolhas descartadas"),
    (r"^expert \(top-1 choice\)$", "especialista (primeira escolha)"),
    (r"^log2 enrichment \(0: fair share; saturates at ±(\S+)\)$",
     r"enriquecimento log2 (0: parcela justa; satura em ±\1)"),
    (r"^validation loss at step (\d+) \(nats per token, fixed sample\)$",
     r"loss de validação no passo \1 (nats por token, amostra fixa)"),
    (r"^validation loss at the end \(nats per token, fixed sample\)$",
     "loss de validação no fim (nats por token, amostra fixa)"),
    (r"^A run's fate is visible by step (\d+): one dot per run$",
     r"O destino de uma execução já aparece no passo \1: um ponto por execução"),
    (r"^ step (\d+): upcycling$", r" passo \1: upcycling"),
    (r"^training compute \(PFLOP\)$", "computação de treino (PFLOP)"),
    (r"^Per FLOP \(after the upcycling step\)$", "Por FLOP (após o passo de upcycling)"),
    (r"^Per second \(step times measured interleaved\)$", "Por segundo (tempos de passo medidos de forma intercalada)"),
    (r": ([\d.]+) at the start, ([\d.]+) at the end", r": \1 no início, \2 no fim"),
    (r"^off this scale \(random starts\):", "fora desta escala (inícios aleatórios):"),
    (r"^ln (\d+): uniform router$", r"ln \1: roteador uniforme"),
    (r"^steps since the MoE started$", "passos desde o início do MoE"),
    (r"^expert spread \(relative distance\)$", "dispersão (distância relativa)"),
    (r"^Experts: mean pairwise distance / norm of their mean$",
     "Especialistas: distância média entre pares / norma da média"),
    (r"^router entropy \(nats\)$", "entropia do roteador (nats)"),
    (r"^Router: entropy of the expert probabilities$", "Roteador: entropia das probabilidades"),
    (r"^router W_r ", "roteador W_r "),
    (r"\+ shared\(x\)", "+ compartilhado(x)"),
    # --- labels and titles the notebooks pass in (studies' arms and models)
    (r"^\(a\) dense, continued", "(a) denso, continuado"),
    (r"^\(b\) upcycled, AdamW carried", "(b) com upcycling, AdamW transferido"),
    (r"^\(b'\) upcycled, fresh AdamW", "(b') com upcycling, AdamW novo"),
    (r"^\(c\) MoE from scratch, same FLOPs", "(c) MoE do zero, mesmos FLOPs"),
    (r"\(c\) MoE from scratch, same FLOPs:", "(c) MoE do zero, mesmos FLOPs:"),
    (r"^\(d\) dense, same FLOPs as \(b\)", "(d) denso, mesmos FLOPs que (b)"),
    (r"^\+ loss-free balancing", "+ balanceamento sem loss auxiliar"),
    (r"^Final validation loss, evaluated without a capacity limit$",
     "Loss de validação final, avaliada sem limite de capacidade"),
    (r"\(half width\)", "(meia largura)"),
    (r"\(full width\)", "(largura inteira)"),
    (r"^(.+), layer (\d+): enrichment of first choices by class$",
     r"\1, camada \2: enriquecimento das primeiras escolhas por classe"),
    (r"^(.+), layer (\d+): enrichment of first choices by genre$",
     r"\1, camada \2: enriquecimento das primeiras escolhas por gênero"),
    (r"^Share of routing choices dropped at the end of training$",
     "Fração das escolhas de roteamento descartadas no fim do treino"),
    (r"^Share of routing choices dropped at the worst of the first (\d+) steps$",
     r"Fração das escolhas de roteamento descartadas no pior dos primeiros \1 passos"),
    (r"^SwiGLU experts", "especialistas SwiGLU"),
    (r"^balancing bias per expert", "viés de balanceamento por especialista"),
    (r"^balancing weight ", "peso do balanceamento "),
    (r"^capacity factor in training$", "fator de capacidade no treino"),
    (r"^dense, 4x wider MLP", "denso, MLP 4x mais larga"),
    (r"^dense\b", "denso"),
    (r"^experts E \(top-2 of half width\)$", "especialistas E (top-2 de meia largura)"),
    (r"^experts E \(top-(\d+) of meia largura\)$", r"especialistas E (top-\1 de meia largura)"),
    (r"^fine-grained \+ shared, balancing bias$", "granularidade fina + compartilhado, viés de balanceamento"),
    (r"^fine-grained \+ shared, balancing loss$", "granularidade fina + compartilhado, loss de balanceamento"),
    (r"^fine-grained \+ shared", "granularidade fina + compartilhado"),
    (r"^fine-grained (\d+) x", r"granularidade fina \1 x"),
    (r"^dropless$", "sem descarte"),
    # the token classes of `specialisation.CLASSES`, as the heatmaps' row labels "class (count)"
    (r"^whitespace( \(|$)", r"espaço em branco\1"),
    (r"^punctuation( \(|$)", r"pontuação\1"),
    (r"^number( \(|$)", r"número\1"),
    (r"^capitalised( \(|$)", r"maiúscula inicial\1"),
    (r"^function word( \(|$)", r"palavra funcional\1"),
    (r"^verb ending( \(|$)", r"terminação verbal\1"),
    (r"^other word start( \(|$)", r"outro início de palavra\1"),
    (r"^other word piece( \(|$)", r"outro pedaço de palavra\1"),
    # last: a parameter count inside a diagram's box
    (r"([\d,]+) params\b", r"\1 parâmetros"),
)

TABLES: dict[str, tuple[tuple[str, str], ...]] = {"en": (), "pt-br": PT_BR}


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"figure language {language!r} is not available; choose one of {', '.join(LANGUAGES)}")
    return language


@cache
def _compiled(language: str) -> tuple[tuple[re.Pattern, str], ...]:
    return tuple((re.compile(pattern), replacement) for pattern, replacement in TABLES[language])


def translate(text: str, language: str) -> str:
    """`text` with every pattern of `language`'s table replaced, in the table's order."""
    for pattern, replacement in _compiled(check_language(language)):
        text = pattern.sub(replacement, text)
    return text


def localise(fig: Figure, language: str) -> Figure:
    """Rewrite every text of `fig` into `language` (in place) and return it."""
    if check_language(language) == "en":
        return fig
    for artist in fig.findobj(Text):
        text = artist.get_text()
        if text:
            artist.set_text(translate(text, language))
    for ax in fig.axes:  # tick labels given as a list are redrawn from their formatter at each draw
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, FixedFormatter):
                formatter.seq = [translate(str(label), language) for label in formatter.seq]
            elif isinstance(formatter, FuncFormatter):  # matplotlib >= 3.9 keeps a list of labels this way
                label_of = formatter.func
                axis.set_major_formatter(FuncFormatter(
                    lambda value, pos, label_of=label_of: translate(str(label_of(value, pos)), language)))
    return fig
