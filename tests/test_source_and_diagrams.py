"""The notebooks' code display (nanogpt_lib.source) and the architecture diagrams (nanogpt_lib.plots)."""

import dataclasses
import inspect
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nanogpt_lib import GPT, part1_config  # noqa: E402
from nanogpt_lib.model import Block, CausalSelfAttention  # noqa: E402
from nanogpt_lib.moe import route  # noqa: E402
from nanogpt_lib.plots import plot_gpt_diagram, plot_moe_diagram  # noqa: E402
from nanogpt_lib.source import show_source  # noqa: E402
from nanogpt_lib.training import train_step  # noqa: E402


def test_the_source_shown_is_the_librarys_own_text():
    shown = show_source(CausalSelfAttention.forward)
    assert shown.name == "nanogpt_lib.model.CausalSelfAttention.forward"
    assert shown.code == textwrap.dedent(inspect.getsource(CausalSelfAttention.forward)).rstrip("\n")
    markdown = shown._repr_markdown_()
    assert markdown.startswith("`nanogpt_lib.model.CausalSelfAttention.forward`\n\n```python\ndef forward(")
    assert markdown.rstrip().endswith("```")
    assert repr(shown) == "<source of nanogpt_lib.model.CausalSelfAttention.forward: several lines>"


def test_a_method_by_name_without_docstring_and_a_few_lines():
    assert show_source(GPT, "generate").code == show_source(GPT.generate).code
    bare = show_source(train_step, docstring=False).code
    assert '"""' not in bare and "optimizer.zero_grad" in bare and bare.startswith("def train_step(")
    assert '"""' in show_source(route).code
    line = show_source(Block.forward, lines="x + y").code.splitlines()
    assert line[0] == "def forward(" and line[-2] == "    ..." and line[-1].strip() == "return x + y"


def test_show_source_refuses_what_it_cannot_show():
    with pytest.raises(AttributeError, match="GPT has no attribute 'nothing'"):
        show_source(GPT, "nothing")
    with pytest.raises(TypeError, match="not a class"):
        show_source(route, "forward")
    with pytest.raises(ValueError, match="contains 'no such text'"):
        show_source(route, lines="no such text")
    with pytest.raises(TypeError, match="no Python source"):
        show_source(len)


def test_a_fence_inside_the_code_does_not_end_the_block():
    from nanogpt_lib.source import Source

    markdown = Source(name="m.f", code='x = "```"')._repr_markdown_()
    assert "````python" in markdown and markdown.rstrip().endswith("````")


def _texts(fig):
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n".join(ax.get_title() for ax in fig.axes)


def test_the_gpt_diagram_counts_add_up_to_the_model():
    config = part1_config(vocab_size=4096)
    fig = plot_gpt_diagram(config)
    text = _texts(fig)
    assert all(ax.get_title() for ax in fig.axes)
    assert "GPT: 1,330,432 parameters" in text  # what the README and notebook 01 print
    assert "(1, 4, 100, 32) = (B, H, T, D)" in text and "(1, 100, 4096) = (B, T, V)" in text
    block = sum(p.numel() for p in GPT(config).transformer.h[0].parameters())
    assert f"{block:,} params each" in text and "49,536 params" in text  # c_attn: 128 x 384 + 384
    plt.close(fig)
    with pytest.raises(ValueError, match="plot_moe_diagram"):
        plot_gpt_diagram(dataclasses.replace(config, n_expert=4))


def test_the_moe_diagram_draws_experts_shared_experts_and_folds_many():
    config = dataclasses.replace(part1_config(vocab_size=4096), n_expert=8, top_k=2)
    text = _texts(plot_moe_diagram(config))
    assert "1,024 params" in text and "ceil(f N k / E) = 32" in text and "expert 7: 128->512->128" in text
    assert "shared" not in text and "softmax" in text
    fine = dataclasses.replace(config, n_expert=32, top_k=6, expert_hidden=64, n_shared_expert=2,
                               expert_type="swiglu", router_type="sigmoid")
    text = _texts(plot_moe_diagram(fine, n_tokens=50))
    assert "2 shared experts: every token" in text and "... 23 more ..." in text and "expert 31" in text
    assert "+ bias b" in text and "(50, 32)" in text and "top-6 of 32 + 2 shared" in text
    dropless = _texts(plot_moe_diagram(dataclasses.replace(config, capacity_factor=None)))
    assert "no limit: N = 100" in dropless and "ceil(" not in dropless and "dropped (adds 0)" not in dropless
    plt.close("all")
    with pytest.raises(ValueError, match="n_expert >= 2"):
        plot_moe_diagram(part1_config(vocab_size=64))
