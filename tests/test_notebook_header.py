"""blog.notebook_header: the Colab and Binder links and the Colab install cell, from _config.yml."""

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from blog.notebook_header import INSTALL_TAG, LINKS_TAG, apply_header, has_header, install_source, main
from blog.posts import SiteConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG = SiteConfig("owner/repo", "trunk", None)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "_config.yml").write_text("repository: owner/repo\nbranch: trunk\nseries_start: 2024-01-01\n")
    (tmp_path / "notebooks").mkdir()
    nb = new_notebook(cells=[new_markdown_cell("# 01 · Title"), new_code_cell("import torch")])
    nbformat.write(nb, tmp_path / "notebooks" / "01_a.ipynb")
    return tmp_path


def test_the_header_goes_below_the_title_with_links_for_the_configured_repository(repo):
    path = repo / "notebooks" / "01_a.ipynb"
    assert main(["--root", str(repo), str(path)]) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "markdown", "code", "code"]
    assert cells[1].metadata.tags == [LINKS_TAG] and cells[2].metadata.tags == [INSTALL_TAG]
    links = cells[1].source
    assert "(https://colab.research.google.com/github/owner/repo/blob/trunk/notebooks/01_a.ipynb)" in links
    assert "(https://mybinder.org/v2/gh/owner/repo/trunk?labpath=notebooks%2F01_a.ipynb)" in links
    assert "git+https://github.com/owner/repo.git@trunk" in cells[2].source
    assert "nanogpt_lib" not in cells[2].source  # not installed yet when it runs in Colab


def test_the_generator_is_idempotent_and_follows_a_new_branch(repo, capsys):
    path = repo / "notebooks" / "01_a.ipynb"
    main(["--root", str(repo), str(path)])
    first = path.read_text()
    assert main(["--root", str(repo), str(path)]) == 0 and path.read_text() == first
    assert main(["--root", str(repo), "--check", str(path)]) == 0
    (repo / "_config.yml").write_text("repository: owner/repo\nbranch: next\nseries_start: 2024-01-01\n")
    assert main(["--root", str(repo), "--check", str(path)]) == 1 and path.read_text() == first
    assert "stale: " in capsys.readouterr().out
    main(["--root", str(repo), str(path)])
    nb = nbformat.read(path, as_version=4)
    assert len(nb.cells) == 4 and "blob/next/" in nb.cells[1].source and "@next" in nb.cells[2].source


def test_the_install_cell_does_nothing_outside_colab_and_installs_inside(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(install_source(CONFIG), {})
    assert calls == [] and capsys.readouterr() == ("", "")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install_source(CONFIG), {})
    (command,), kwargs = calls[0]
    assert command[1:5] == ["-m", "pip", "install", "-q"] and command[0] == sys.executable
    assert command[5] == "nanogpt-lib @ git+https://github.com/owner/repo.git@trunk" and kwargs == {"check": True}
    assert capsys.readouterr() == ("", "")


def test_every_notebook_with_a_header_has_the_current_one():
    config = SiteConfig.load(ROOT)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    with_header = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if has_header(nb):
            with_header.append(path.name)
            before = json.dumps(nb.cells)
            apply_header(nb, config, f"notebooks/{path.name}")
            assert json.dumps(nb.cells) == before, f"{path.name}: run python -m blog.notebook_header {path}"
            code = [c for c in nb.cells if c.cell_type == "code"]
            assert INSTALL_TAG in code[0].metadata.get("tags", []), f"{path.name}: the install cell comes first"
    assert {"01_config.ipynb", "05_moe.ipynb"} <= set(with_header)
