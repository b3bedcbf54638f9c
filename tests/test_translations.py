"""The Brazilian Portuguese edition: every Markdown cell translated from the current English text, the glossary
kept, and the committed notebooks/pt-br/ notebooks built from the translations and executed, with the English
code and printed outputs and figures redrawn in Portuguese."""

import re

import nbformat
import pytest
import yaml

from blog.markdown import transform_prose
from blog.posts import LANGUAGE_TAG, ROOT, numbered_notebooks
from blog.translations import (
    Entry,
    accept,
    add_missing,
    english_hash,
    english_texts,
    has_prose,
    load,
    parse,
    problems,
    relink,
    render,
    same_outputs,
    sources,
    translated_notebook,
    translated_notebook_path,
    translation_path,
)

LANGUAGE = "pt-br"
ENGLISH = numbered_notebooks(ROOT)
GLOSSARY = yaml.safe_load((ROOT / "notebooks/translations/pt-br/glossary.yml").read_text(encoding="utf-8"))
IMAGE = "image/png"


def prose(text: str) -> str:
    """`text` without code, math and link targets: what a reader reads as sentences."""
    kept: list[str] = []
    transform_prose(text, lambda outside: kept.append(re.sub(r"\]\([^)]*\)", "]", outside)) or outside,
                    kramdown_math=False)
    return re.sub("\x00\\d+\x00", " ", "".join(kept))


@pytest.mark.parametrize("notebook", ENGLISH, ids=lambda p: p.name)
def test_every_markdown_cell_is_translated_from_its_current_english_text(notebook):
    found = problems(ROOT, LANGUAGE, notebook)
    assert not found, ("\n".join(map(str, found)) + "\nupdate notebooks/translations/pt-br/, then "
                       "`python -m blog.translations accept pt-br NN CELL`, then `python -m blog.translations build "
                       "pt-br`")


def test_the_glossary_gives_one_term_and_a_meaning_to_each_english_term():
    assert len(GLOSSARY) >= 40
    english = [entry["en"] for entry in GLOSSARY]
    assert len(set(english)) == len(english)
    for entry in GLOSSARY:
        assert {"en", "pt", "meaning"} <= entry.keys(), entry
        assert entry["pt"].strip() and entry["meaning"].strip(), entry
    terms = {entry["en"]: entry["pt"] for entry in GLOSSARY}
    assert terms["router"] == "roteador" and terms["expert"] == "especialista"
    assert terms["capacity factor"] == "fator de capacidade" and terms["perplexity"] == "perplexidade"
    assert terms["top-k"] == "top-k"


@pytest.mark.parametrize("notebook", ENGLISH, ids=lambda p: p.name)
def test_the_translations_keep_to_the_glossary(notebook):
    text = "\n".join(prose(entry.text) for entry in load(ROOT, LANGUAGE, notebook).values())
    for entry in GLOSSARY:
        for variant in entry.get("avoid", []):
            hit = re.search(rf"(?<!\w){re.escape(variant)}(?!\w)", text, re.IGNORECASE)
            context = text[max(0, hit.start() - 60):hit.end() + 60] if hit else ""
            assert hit is None, (f"{translation_path(ROOT, LANGUAGE, notebook).name}: {variant!r} where the glossary "
                                 f"uses {entry['pt']!r} for {entry['en']!r}: ...{context}...")
    for term in ("roteador", "especialista"):  # used where the English notebook talks of routers and experts
        english = " ".join(c.source for c in nbformat.read(notebook, 4).cells if c.cell_type == "markdown")
        if re.search(r"\brouter\b" if term == "roteador" else r"\bexperts?\b", prose(english)):
            assert term in text, f"{notebook.name}: the English prose has the word but the translation lacks {term!r}"


def test_the_translations_keep_code_math_and_link_targets():
    spans = re.compile(r"`[^`\n]+`|\$\$.+?\$\$|\]\([^)\s]+\)", re.DOTALL)
    for notebook in ENGLISH:
        english = english_texts(nbformat.read(notebook, 4))
        for cell_id, entry in load(ROOT, LANGUAGE, notebook).items():
            missing = set(spans.findall(english[cell_id])) - set(spans.findall(entry.text))
            assert not missing, f"{notebook.name}, cell {cell_id}: lost or changed {sorted(missing)[:3]}"


def test_the_title_heading_is_translated_and_keeps_its_number():
    for notebook in ENGLISH:
        nb = translated_notebook(ROOT, LANGUAGE, notebook)
        first = next(c.source for c in nb.cells if c.cell_type == "markdown")
        assert first.startswith(f"# {notebook.name[:2]} · "), (notebook.name, first[:80])


@pytest.mark.parametrize("notebook", ENGLISH, ids=lambda p: p.name)
def test_the_portuguese_notebook_is_built_from_the_current_translation_and_executed(notebook):
    path = translated_notebook_path(ROOT, LANGUAGE, notebook)
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: python -m blog.translations build pt-br"
    built = nbformat.read(path, as_version=4)
    assert sources(built) == sources(translated_notebook(ROOT, LANGUAGE, notebook)), (
        f"{path.relative_to(ROOT)} is stale: python -m blog.translations build pt-br {notebook.name[:2]}")
    english = nbformat.read(notebook, as_version=4)
    assert same_outputs(built, english), (
        "the printed outputs differ from the English notebook's: re-execute both (make notebooks)")
    language_cell = next(c for c in built.cells if LANGUAGE_TAG in c.metadata.get("tags", []))
    assert 'plots.set_language("pt-br")' in language_cell.source and language_cell.execution_count == 2
    english_images = [out.data[IMAGE] for c in english.cells if c.cell_type == "code"
                      for out in c.outputs if IMAGE in out.get("data", {})]
    built_images = [out.data[IMAGE] for c in built.cells if c.cell_type == "code"
                    for out in c.outputs if IMAGE in out.get("data", {})]
    assert len(built_images) == len(english_images)
    same = [i for i, (a, b) in enumerate(zip(built_images, english_images, strict=True)) if a == b]
    assert not same, f"figures {same} of {path.name} are the English ones: every figure has words to translate"


def test_there_is_no_portuguese_notebook_without_an_english_one():
    english = {p.name for p in ENGLISH}
    assert {p.name for p in numbered_notebooks(ROOT, LANGUAGE)} <= english
    assert not set(p.name for p in (ROOT / "notebooks/translations/pt-br").glob("*.md")) - {
        p.stem + ".md" for p in ENGLISH}


# --- the mechanism, on a repository of its own -----------------------------------------------------------------

@pytest.fixture()
def repo(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_config.yml").write_text("repository: me/nano\nbranch: main\nseries_start: 2025-08-23\n",
                                          encoding="utf-8")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · The router\n\nThe router picks `top_k` experts: $k=2$."),
                nbformat.v4.new_code_cell("print(1)"),
                nbformat.v4.new_markdown_cell("See [the next one](02_next.ipynb) and [docs](../docs/x.md).")]
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i}"
    path = tmp_path / "notebooks" / "01_router.ipynb"
    nbformat.write(nb, path)
    return tmp_path, path


def test_template_stale_accept_and_extra_cells(repo):
    root, notebook = repo
    assert [p.kind for p in problems(root, LANGUAGE, notebook)] == ["missing", "missing"]
    assert add_missing(root, LANGUAGE, notebook) == 2 and add_missing(root, LANGUAGE, notebook) == 0
    assert [p.kind for p in problems(root, LANGUAGE, notebook)] == ["untranslated", "untranslated"]
    file = translation_path(root, LANGUAGE, notebook)
    entries = load(root, LANGUAGE, notebook)
    entries["c0"] = Entry("# 01 · O roteador\n\nO roteador escolhe `top_k` especialistas: $k=2$.",
                          entries["c0"].english_hash)
    entries["c2"] = Entry("Veja [o próximo](02_next.ipynb) e a [documentação](../docs/x.md).",
                          entries["c2"].english_hash)
    file.write_text(render(entries, LANGUAGE, "notebooks/01_router.ipynb"), encoding="utf-8")
    assert problems(root, LANGUAGE, notebook) == []
    nb = nbformat.read(notebook, 4)
    nb.cells[0].source += " Twice."
    nbformat.write(nb, notebook)
    assert [(p.cell_id, p.kind) for p in problems(root, LANGUAGE, notebook)] == [("c0", "stale")]
    accept(root, LANGUAGE, notebook, ["c0"])
    assert problems(root, LANGUAGE, notebook) == []
    assert load(root, LANGUAGE, notebook)["c0"].english_hash == english_hash(nb.cells[0].source)
    nb.cells.pop()
    nbformat.write(nb, notebook)
    assert [(p.cell_id, p.kind) for p in problems(root, LANGUAGE, notebook)] == [("c2", "extra")]
    with pytest.raises(ValueError, match="cell 'c9' is not both translated"):
        accept(root, LANGUAGE, notebook, ["c9"])


def test_the_built_notebook_has_the_translation_the_header_and_the_language_cell(repo):
    root, notebook = repo
    add_missing(root, LANGUAGE, notebook)
    file = translation_path(root, LANGUAGE, notebook)
    text = file.read_text(encoding="utf-8").replace("The router picks", "O roteador escolhe").replace(
        "# 01 · The router", "# 01 · O roteador").replace("See [the next one]", "Veja [o próximo]")
    file.write_text(text, encoding="utf-8")
    nb = translated_notebook(root, LANGUAGE, notebook)
    kinds = [(c.cell_type, c.metadata.get("tags", [])) for c in nb.cells]
    assert kinds[:4] == [("markdown", []), ("markdown", ["header-links"]), ("code", ["colab-install"]),
                         ("code", [LANGUAGE_TAG])]
    assert "notebooks/pt-br/01_router.ipynb" in nb.cells[1].source and "Rode no navegador" in nb.cells[1].source
    assert nb.cells[0].source.startswith("# 01 · O roteador")
    assert "(02_next.ipynb)" in nb.cells[-1].source and "(../../docs/x.md)" in nb.cells[-1].source
    assert nb.cells[4].source == "print(1)" and nb.cells[4].outputs == []


def test_translation_files_are_parsed_strictly():
    text = "<!-- header -->\n\n<!-- cell a1 en-sha256 0123456789abcdef -->\nOlá\n\n<!-- cell b2 en-sha256 " \
           "fedcba9876543210 -->\nTchau `x`\n"
    assert parse(text) == {"a1": Entry("Olá", "0123456789abcdef"), "b2": Entry("Tchau `x`", "fedcba9876543210")}
    assert parse(render(parse(text), LANGUAGE, "nb")) == parse(text)
    with pytest.raises(ValueError, match="cell a1 is translated twice"):
        parse(text + "\n<!-- cell a1 en-sha256 0123456789abcdef -->\nDe novo\n")
    with pytest.raises(ValueError, match="expected 16 hex digits"):
        parse("<!-- cell a1 en-sha256 0123 -->\nOlá\n")


def test_relink_and_has_prose():
    assert relink("[a](05_moe.ipynb) [b](../README.md) [c](https://x.org/a.md) `[d](e.md)`") == \
        "[a](05_moe.ipynb) [b](../../README.md) [c](https://x.org/a.md) `[d](e.md)`"
    assert relink("![fig](img/x.png#top)") == "![fig](../img/x.png#top)"
    assert has_prose("The router") and not has_prose("$k = 2$ `top_k` [](x.ipynb)")
