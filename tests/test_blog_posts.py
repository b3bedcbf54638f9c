"""The notebook -> post converter (blog.posts) on small synthetic repositories built in tmp_path."""

import base64

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from blog.markdown import pop_title, transform_prose
from blog.posts import main, render_posts, stale_files, write_posts

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # any bytes: the converter copies them as they are
WIDGET = {"model_id": "abc123", "version_major": 2, "version_minor": 0}


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "_config.yml").write_text("repository: owner/repo\nbranch: trunk\nseries_start: 2024-01-01\n")
    (tmp_path / "notebooks" / "figures").mkdir(parents=True)
    (tmp_path / "notebooks" / "figures" / "diagram.png").write_bytes(b"diagram")
    (tmp_path / "nanogpt_lib").mkdir()
    (tmp_path / "nanogpt_lib" / "model.py").write_text("# the model\n")
    write_notebook(tmp_path, "04_second.ipynb", [new_markdown_cell("# 04 · Second\n\nText.")])
    return tmp_path


def write_notebook(root, name, cells, **metadata):
    nb = new_notebook(cells=cells, metadata=metadata)
    nbformat.write(nb, root / "notebooks" / name)


def first_notebook(root, markdown, cells=(), **metadata):
    write_notebook(root, "03_first_try.ipynb", [new_markdown_cell(markdown), *cells], **metadata)
    files = render_posts(root)
    name = next(name for name in files if name.startswith("_posts/") and "03-first-try" in name)
    text = files[name].decode()
    _, front, body = text.split("---\n", 2)
    return name, yaml.safe_load(front), body, files


def test_front_matter_title_date_and_place(repo):
    name, front, body, _ = first_notebook(repo, "# 03 · The `GPTConfig`, **first**\n\nIntro with {{ liquid }}.")
    assert name == "_posts/2024-01-03-03-first-try.md"  # series_start + (3 - 1) days
    assert front == {"layout": "notebook", "title": "03 · The GPTConfig, first", "lang": "en", "categories": ["moe"],
                     "permalink": "/moe/03-first-try/", "series_number": "03",
                     "notebook": "notebooks/03_first_try.ipynb", "translations": [], "render_with_liquid": False}
    assert "# 03" not in body  # the layout shows the title
    assert body.strip() == "Intro with {{ liquid }}."


def test_a_translated_notebook_is_a_post_of_its_edition_and_the_twins_link_each_other(repo):
    (repo / "notebooks" / "pt-br").mkdir()
    language_cell = new_code_cell('plots.set_language("pt-br")', metadata={"tags": ["figure-language"]})
    nb = new_notebook(cells=[new_markdown_cell("# 03 · O primeiro\n\nVeja o [próximo](04_second.ipynb)."),
                             language_cell, new_code_cell("x = 1")])
    nbformat.write(nb, repo / "notebooks" / "pt-br" / "03_first_try.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("# 04 · Segundo")]),
                   repo / "notebooks" / "pt-br" / "04_second.ipynb")
    write_notebook(repo, "03_first_try.ipynb", [new_markdown_cell("# 03 · The first")])
    files = render_posts(repo)
    english = yaml.safe_load(files["_posts/2024-01-03-03-first-try.md"].decode().split("---\n")[1])
    text = files["_posts/pt-br/2024-01-03-03-first-try.md"].decode()
    portuguese = yaml.safe_load(text.split("---\n")[1])
    assert english["translations"] == [{"lang": "pt-br", "url": "/pt-br/moe/03-first-try/"}]
    assert portuguese["translations"] == [{"lang": "en", "url": "/moe/03-first-try/"}]
    assert portuguese["lang"] == "pt-br" and portuguese["categories"] == ["moe", "pt-br"]
    assert portuguese["permalink"] == "/pt-br/moe/03-first-try/" and portuguese["title"] == "03 · O primeiro"
    assert portuguese["notebook"] == "notebooks/pt-br/03_first_try.ipynb"
    assert "set_language" not in text and "x = 1" in text  # the language cell is the edition's, not the reader's
    assert "[próximo](../04-second/)" in text  # the link to a notebook goes to its post in the same edition
    (repo / "notebooks" / "pt-br" / "05_orphan.ipynb").write_text(nbformat.writes(nb), encoding="utf-8")
    with pytest.raises(ValueError, match=r"translated notebooks \['05_orphan.ipynb'\] have no English notebook"):
        render_posts(repo)


def test_the_notebooks_metadata_can_fix_the_date(repo):
    name, *_ = first_notebook(repo, "# T", blog={"date": "2025-02-28"})
    assert name == "_posts/2025-02-28-03-first-try.md"
    with pytest.raises(ValueError, match=r"03_first_try.ipynb: metadata blog.date .* got 'soon'"):
        first_notebook(repo, "# T", blog={"date": "soon"})


def test_a_notebook_without_heading_is_refused(repo):
    with pytest.raises(ValueError, match="03_first_try.ipynb: no Markdown heading"):
        first_notebook(repo, "Just text, no heading.")


def test_output_images_are_extracted_with_stable_names_and_relative_links(repo):
    plot = new_code_cell("# alt: A line rising to the right\nplot()", execution_count=1, outputs=[new_output(
        "display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})])
    _, _, body, files = first_notebook(repo, "# T", cells=[plot])
    assert files["assets/notebooks/03-first-try/03-first-try_1_0.png"] == PNG  # slug, cell index, output index
    assert "![A line rising to the right](../../assets/notebooks/03-first-try/03-first-try_1_0.png)" in body
    assert "<Figure>" not in body and "# alt:" not in body


def _figure_cell(source):
    image = {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}
    return new_code_cell(source, execution_count=1, outputs=[
        new_output("display_data", data=image), new_output("stream", name="stdout", text="between\n"),
        new_output("display_data", data=image)])


def test_each_figure_takes_its_alt_line_in_order(repo):
    cell = _figure_cell("# alt: Loss against epoch\nshow()\n"
                        "# alt: Perplexity against epoch,\n#   log scale\n# a comment\nshow()")
    _, _, body, _ = first_notebook(repo, "# T", cells=[cell])
    assert "![Loss against epoch](../../assets/notebooks/03-first-try/03-first-try_1_0.png)" in body
    assert "![Perplexity against epoch, log scale](../../assets/notebooks/03-first-try/03-first-try_1_2.png)" in body
    assert "![png]" not in body and "# alt" not in body and "log scale\n" not in body
    assert "show()\n# a comment\nshow()" in body


def test_a_figure_without_alt_text_is_an_error(repo):
    with pytest.raises(ValueError, match=r"03_first_try.ipynb, cell 1: 2 figure\(s\) but 1 `# alt"):
        first_notebook(repo, "# T", cells=[_figure_cell("# alt: only one\nshow()")])
    with pytest.raises(ValueError, match="empty or holds a bracket"):
        first_notebook(repo, "# T", cells=[_figure_cell("# alt: [x]\n# alt: y\nshow()")])


def test_the_colab_install_cell_is_left_out_of_the_post(repo):
    install = new_code_cell("pip_install_in_colab()", metadata={"tags": ["colab-install"]}, execution_count=1)
    _, _, body, _ = first_notebook(repo, "# T", cells=[install, new_code_cell("kept()")])
    assert "pip_install_in_colab" not in body and "kept()" in body


def test_links_are_rewritten_for_the_site(repo):
    markdown = "\n".join([
        "# T",
        "[next](04_second.ipynb#top) [code](../nanogpt_lib/model.py) [pkg](../nanogpt_lib)",
        "![diagram](figures/diagram.png) <img src='figures/diagram.png'> [web](https://example.org/a.py)",
        "[anchor](#here) [absolute](/feed.xml) `[in code](figures/diagram.png)`",
        "",
        "[ref]: 04_second.ipynb",
        "",
        "```",
        "[fenced](figures/diagram.png)",
        "```",
    ])
    _, _, body, files = first_notebook(repo, markdown)
    assert "[next](../04-second/#top)" in body
    assert "[code](https://github.com/owner/repo/blob/trunk/nanogpt_lib/model.py)" in body
    assert "[pkg](https://github.com/owner/repo/tree/trunk/nanogpt_lib)" in body
    assert "![diagram](../../assets/notebooks/03-first-try/diagram.png)" in body
    assert "<img src='../../assets/notebooks/03-first-try/diagram.png'>" in body
    assert files["assets/notebooks/03-first-try/diagram.png"] == b"diagram"
    for unchanged in ("(https://example.org/a.py)", "(#here)", "(/feed.xml)", "`[in code](figures/diagram.png)`",
                      "\n[fenced](figures/diagram.png)\n"):
        assert unchanged in body
    assert "[ref]: ../04-second/" in body


@pytest.mark.parametrize(("link", "message"), [
    ("missing.py", r"03_first_try.ipynb: link 'missing.py' points to notebooks/missing.py, which does not exist"),
    ("../../elsewhere.txt", r"link '../../elsewhere.txt' points outside the repository"),
    ("05_future.ipynb", r"points to notebooks/05_future.ipynb, which does not exist"),
])
def test_a_broken_link_is_an_error_not_a_broken_page(repo, link, message):
    with pytest.raises(ValueError, match=message):
        first_notebook(repo, f"# T\n\n[x]({link})")


def test_inline_math_becomes_kramdown_math_and_code_keeps_its_dollars(repo):
    markdown = "# T\n\nInline $x_{t+1}$ and $$\\exp(a)$$; it costs $5 and $10; `$HOME`.\n\n$$\\mathcal{L}$$"
    _, _, body, _ = first_notebook(repo, markdown, cells=[new_code_cell('print("$a$")')])
    assert "Inline $$x_{t+1}$$ and $$\\exp(a)$$; it costs $5 and $10; `$HOME`." in body
    assert "\n$$\\mathcal{L}$$\n" in body
    assert 'print("$a$")' in body


def test_widget_views_are_dropped_and_test_markers_hidden(repo):
    cell = new_code_cell("# NBVAL_IGNORE_OUTPUT\n# (a widget)\nexplore()", execution_count=1, outputs=[
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": WIDGET,
                                         "text/plain": "interactive(children=(IntSlider(value=4))"}),
        new_output("stream", name="stdout", text="kept\n"),
    ])
    _, _, body, _ = first_notebook(repo, "# T", cells=[cell])
    assert "interactive(" not in body and "IntSlider" not in body
    assert "NBVAL" not in body
    assert "# (a widget)\nexplore()" in body and "    kept" in body


def test_pop_title_keeps_code_out_of_the_search():
    title, rest = pop_title("```\n# not a heading\n```\n\n## The `x` heading ##\n\nBody")
    assert title == "The x heading"
    assert rest == "```\n# not a heading\n```\n\nBody"
    assert pop_title("no heading") == (None, "no heading")
    assert transform_prose("$a$ `$b$`") == "$$a$$ `$b$`"


def test_write_then_check_and_stale_files_are_removed(repo, capsys):
    first_notebook(repo, "# T", cells=[new_code_cell("x = 1")])
    hand_written = repo / "_posts" / "2020-01-01-hello.md"
    hand_written.parent.mkdir()
    hand_written.write_text("---\ntitle: Hello\n---\nMine.\n")
    assert main(["--root", str(repo), "--check"]) == 1
    assert "stale: _posts/2024-01-03-03-first-try.md" in capsys.readouterr().out
    assert main(["--root", str(repo)]) == 0
    assert main(["--root", str(repo), "--check"]) == 0
    assert render_posts(repo) == render_posts(repo)  # deterministic: no timestamps

    (repo / "notebooks" / "03_first_try.ipynb").rename(repo / "notebooks" / "03_renamed.ipynb")
    files = render_posts(repo)
    assert stale_files(repo, files) == ["_posts/2024-01-03-03-first-try.md", "_posts/2024-01-03-03-renamed.md"]
    write_posts(repo, files)
    assert sorted(p.name for p in (repo / "_posts").iterdir()) == [
        "2020-01-01-hello.md", "2024-01-03-03-renamed.md", "2024-01-04-04-second.md"]
    assert stale_files(repo, files) == []


def test_bad_names_numbers_and_config_are_refused(repo):
    write_notebook(repo, "04_again.ipynb", [new_markdown_cell("# Again")])
    with pytest.raises(ValueError, match=r"share the number 04"):
        render_posts(repo)
    (repo / "notebooks" / "04_again.ipynb").rename(repo / "notebooks" / "05_bad name.ipynb")
    with pytest.raises(ValueError, match=r"05_bad name.ipynb: a post's notebook is named NN_name.ipynb"):
        render_posts(repo)
    (repo / "notebooks" / "05_bad name.ipynb").unlink()
    (repo / "_config.yml").write_text("repository: just-a-name\nbranch: main\nseries_start: 2024-01-01\n")
    with pytest.raises(ValueError, match=r"repository must be OWNER/REPO on GitHub, got 'just-a-name'"):
        render_posts(repo)
