"""The Part-1 notebooks in a real browser: JupyterLab in headless Chromium runs each one top to bottom, and the sliders
are moved with the keyboard like a reader would. What the page must show is computed with the library, or read from
the notebook's own outputs in the same page."""

import ast

import pytest
from browser_env import PART1_NOTEBOOKS, require_browser

require_browser()

from browser_pages import LabNotebook  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from nanogpt_lib import GPTConfig  # noqa: E402
from nanogpt_lib.costs import model_cost  # noqa: E402

RUN_ALL_TIMEOUT_S = 180  # per notebook; they take 5-40 s on a 2-core CPU


@pytest.fixture(scope="module")
def notebook(request, lab, browser, screenshots, timings):
    """The notebook `request.param` opened in JupyterLab and run all; its kernel is shut down after its tests."""
    name = request.param
    nb = LabNotebook.open(browser, lab, f"{name}.ipynb")
    try:
        nb.all_ran, timings[f"run-all {name}"] = nb.run_all(RUN_ALL_TIMEOUT_S)
        nb.screenshot(screenshots / f"{name}.png")
        yield nb
    finally:
        nb.close()


@pytest.mark.parametrize("notebook", PART1_NOTEBOOKS, indirect=True)
def test_run_all_completes_without_error_output(notebook):
    assert notebook.error_outputs() == []
    assert notebook.all_ran, "JupyterLab reports that run-all stopped before the last cell"
    # the notebooks print nothing on stderr (progress bars are widgets); a warning or a widget callback's traceback
    # would show up here
    assert notebook.stderr_texts() == []


@pytest.mark.parametrize("notebook", ["01_config"], indirect=True)
def test_config_sliders_show_the_library_parameter_count(notebook, tokenizer, screenshots):
    explorer = notebook.explorer()
    explorer.set("n_head", 3)  # 1 -> 4
    explorer.set("n_layer", 5)  # 1 -> 6
    explorer.set("n_embd", 11)  # 16 -> 192, in steps of 16
    expect(explorer.readouts).to_have_text(["6", "4", "192", "100"])
    expected = model_cost(GPTConfig(n_layer=6, n_head=4, n_embd=192, block_size=100, vocab_size=len(tokenizer)))
    total = explorer.table_value("parameters (total)")
    expect(total).to_have_text(f"{expected.params:,}")
    explorer.box.screenshot(path=screenshots / "01_config-sliders.png")


@pytest.mark.parametrize("notebook", ["01_config"], indirect=True)
def test_config_sliders_show_the_library_error_for_an_impossible_head_count(notebook, tokenizer):
    explorer = notebook.explorer()
    explorer.set("n_embd", 7)  # 16 -> 128
    explorer.set("n_head", 4)  # 1 -> 5, which does not divide 128
    readouts = explorer.readouts.all_inner_texts()
    assert readouts[1:3] == ["5", "128"]
    with pytest.raises(ValueError) as refused:
        GPTConfig(n_layer=int(readouts[0]), n_head=5, n_embd=128, block_size=int(readouts[3]),
                  vocab_size=len(tokenizer))
    expect(explorer.output).to_have_text(f"Impossible configuration. {refused.value}")


# ------------------------------------------------------------------------------------------------------ 04_eval
def printed_continuations(page) -> dict[str, str]:
    """The continuations the notebook itself printed, one `f"{name:<16} {generated!r}"` line per setting."""
    text = page.locator(".jp-OutputArea-output", has_text="greedy (post)").inner_text()
    return {line[:16].strip(): ast.literal_eval(line[17:]) for line in text.splitlines() if line.strip()}


def words(text: str) -> str:
    """`text` as the page lays it out: runs of white space are one space, none at the ends."""
    return " ".join(text.split())


def generated_text(explorer) -> str:
    """What the continuation widget shows after the prefix (in italics), Markdown marks aside."""
    quote = explorer.output.locator("blockquote")
    prefix = quote.locator("em").inner_text()
    return words(quote.inner_text()[len(prefix):].replace("**", ""))


def assert_shows(explorer, header: str, generated: str) -> None:
    expect(explorer.output.locator("p").first).to_have_text(header)
    assert generated_text(explorer) == words(generated)


@pytest.mark.parametrize("notebook", ["04_eval"], indirect=True)
def test_eval_sliders_generate_again_what_the_library_generates(notebook, screenshots):
    """Moving top-k and temperature writes a new continuation, the one the notebook printed for those settings
    (same model, prefix, length and seed)."""
    printed = printed_continuations(notebook.page)
    assert len({printed["greedy (post)"], printed["T=1.0, no top-k"], printed["T=2.0, no top-k"]}) == 3
    explorer = notebook.explorer()
    assert_shows(explorer, "sampled, temperature 1, top_k off, seed 0", printed["T=1.0, no top-k"])  # as run
    explorer.set("top_k (0=off)", 1)
    assert_shows(explorer, "greedy (top_k=1), seed 0", printed["greedy (post)"])
    explorer.set("top_k (0=off)", 0)
    explorer.press("temperature", "End")
    assert_shows(explorer, "sampled, temperature 2, top_k off, seed 0", printed["T=2.0, no top-k"])
    explorer.box.screenshot(path=screenshots / "04_eval-sliders.png")


@pytest.mark.parametrize("notebook", ["04_eval"], indirect=True)
def test_eval_explorer_shows_the_generated_text_in_bold(notebook):
    explorer = notebook.explorer()
    strong = explorer.output.locator("blockquote strong")
    assert words(strong.inner_text(timeout=2_000)) == generated_text(explorer)
