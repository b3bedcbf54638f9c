"""The Jekyll site: committed posts match the notebooks, and Debian's jekyll builds it offline under a baseurl
with every notebook a post, every local link and image resolving, the math intact and the widgets gone."""

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml

from blog.posts import LANGUAGE_TAG, NotebookPost, edition_posts, numbered_notebooks, render_posts, stale_files

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [post.notebook for post in edition_posts(ROOT)]  # both editions: notebooks/ and notebooks/pt-br/
ENGLISH = numbered_notebooks(ROOT)
PORTUGUESE = numbered_notebooks(ROOT, "pt-br")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
BASEURL = "/nanogpt-moe"  # not _config.yml's: the links must not depend on it
APT = "apt-get install jekyll jekyll-theme-minima ruby-jekyll-feed ruby-jekyll-seo-tag"
TEX = re.compile(r"\$\$(.+?)\$\$|(?<!\$)\$([^$\s][^$]*?)\$(?!\$)", re.DOTALL)  # the notebooks' math


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


class Page(HTMLParser):
    """The (tag, attributes) of every element of an HTML file, and its text."""

    def __init__(self, path: Path):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text = html.unescape(path.read_text(encoding="utf-8"))
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {key: value or "" for key, value in attrs}))

    def all(self, tag: str, **classes: str) -> list[dict[str, str]]:
        return [attrs for t, attrs in self.elements if t == tag
                and all(value in attrs.get(key, "").split() for key, value in classes.items())]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built from the repository itself into a temporary folder (nothing written in the repo)."""
    if shutil.which("jekyll") is None:
        if in_ci():
            pytest.fail(f"jekyll is missing in CI ({APT}; .ci/run does it)")
        pytest.skip(f"jekyll is not installed (CI is not set): {APT}")
    dest = tmp_path_factory.mktemp("site")
    cache_before = (ROOT / ".jekyll-cache").exists()
    done = subprocess.run(["jekyll", "build", "--source", str(ROOT), "--destination", str(dest),
                           "--baseurl", BASEURL, "--disable-disk-cache", "--strict-front-matter"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert (ROOT / ".jekyll-cache").exists() == cache_before and not (ROOT / "_site").exists()
    return dest


def post_page(site: Path, notebook: Path) -> Path:
    return site / NotebookPost.of(notebook).permalink.strip("/") / "index.html"


def markdown_sources(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def test_the_committed_posts_are_those_of_the_committed_notebooks():
    stale = stale_files(ROOT, render_posts(ROOT))
    assert not stale, f"stale generated files (run `make posts` and commit them): {stale}"


def test_every_notebook_is_a_post_with_its_title_and_its_code(site):
    assert len(NOTEBOOKS) >= 4
    for notebook in NOTEBOOKS:
        page = Page(post_page(site, notebook))
        heading = re.search(r"^#{1,6}\s+(.+)$", markdown_sources(notebook)[0], re.MULTILINE).group(1)
        assert f'itemprop="name headline">{re.sub(r"[`*]", "", heading)}</h1>' in page.text, notebook.name
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()
                and not {"colab-install", LANGUAGE_TAG} & set(c["metadata"].get("tags", []))]  # left out of posts
        shown = [o for c in code for o in c["outputs"]  # show_source's output is a Python block too
                 if "```python" in "".join(o.get("data", {}).get("text/markdown", ""))]
        assert len(page.all("div", **{"class": "language-python"})) == len(code) + len(shown), notebook.name


def test_every_local_link_and_image_resolves_to_a_file_of_the_site(site):
    pages = sorted(site.rglob("*.html"))
    images = 0
    for path in pages:
        page = Page(path)
        url = f"{BASEURL}/{path.relative_to(site).as_posix()}".removesuffix("index.html")
        links = [(t, a.get("href") or a.get("src")) for t, a in page.elements if t in ("a", "img", "link", "script")]
        for tag, link in links:
            if not link or urlsplit(link).scheme or link.startswith(("#", "//")):
                continue
            target = unquote(urlsplit(urljoin(f"https://example.org{url}", link)).path)
            assert target.startswith(BASEURL + "/"), f"{path.name}: {link} leaves the site's baseurl"
            file = site / target.removeprefix(BASEURL + "/")
            file = file / "index.html" if target.endswith("/") else file
            assert file.is_file(), f"{path.relative_to(site)}: <{tag}> {link} -> {target} is not in _site"
            images += tag == "img"
    posted = sum(1 for nb in NOTEBOOKS for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]
                 for out in cell.get("outputs", []) if {"image/png", "image/jpeg"} & set(out.get("data", {})))
    assert images >= posted >= 5


def test_the_math_survives_as_tex_for_mathjax(site):
    found = 0
    for notebook in NOTEBOOKS:
        page = Page(post_page(site, notebook))
        text = re.sub(r"\s+", " ", page.text)
        for match in TEX.finditer("\n".join(markdown_sources(notebook))):
            tex = re.sub(r"\s+", " ", (match.group(1) or match.group(2)).strip())
            assert f"\\[{tex}\\]" in text or f"\\({tex}\\)" in text, f"{notebook.name}: {tex} lost"
            found += 1
        if found:
            assert any("mathjax" in s.get("src", "") for s in page.all("script")), notebook.name
    assert found >= 3
    assert any("\\[\\mathcal{L} = -\\frac{1}{T-1}" in Page(post_page(site, nb)).text for nb in NOTEBOOKS)


def test_each_post_links_to_its_notebook_and_to_binder(site):
    repository, branch = CONFIG["repository"], CONFIG["branch"]
    for notebook in NOTEBOOKS:
        page = Page(post_page(site, notebook))
        path = notebook.relative_to(ROOT).as_posix()
        assert page.all("a", **{"class": "notebook-link"})[0]["href"] == (
            f"https://github.com/{repository}/blob/{branch}/{path}")
        assert page.all("a", **{"class": "binder-link"})[0]["href"] == (
            f"https://mybinder.org/v2/gh/{repository}/{branch}?labpath={path.replace('/', '%2F')}")


@pytest.mark.parametrize("language", ["en", "pt-br"])
def test_the_index_lists_the_series_in_order_with_the_parts_to_come(site, language):
    page = Page(site / ("index.html" if language == "en" else "pt-br/index.html"))
    notebooks = ENGLISH if language == "en" else PORTUGUESE
    key, coming_word = ("", "coming") if language == "en" else ("_pt_br", "em breve")
    linked = [a["href"] for a in page.all("a", **{"class": "post-link"})]
    assert linked == [f"{BASEURL}{NotebookPost.of(nb).permalink}" for nb in notebooks], "add it to _data/series.yml"
    series = yaml.safe_load((ROOT / "_data" / "series.yml").read_text(encoding="utf-8"))
    have = {NotebookPost.of(nb).number for nb in notebooks}
    coming = [e for part in series for e in part["notebooks"] if e["number"] not in have]
    first = ["Part 1", "Part 2", "Part 3"] if language == "en" else ["Parte 1", "Parte 2", "Parte 3"]
    assert [p["title" + key].split(" · ")[0] for p in series][:3] == first
    for part in series:
        assert f"<h2>{part['title' + key]}</h2>" in page.text
    for entry in coming:
        coming_entry = f"{entry['number']} · {entry['topic' + key]} <span class=\"post-meta\">({coming_word})</span>"
        assert coming_entry in page.text


def test_every_page_says_its_language_and_links_to_the_same_page_in_the_other(site):
    """Each post and index page: <html lang>, and a language switch to its twin, which links back."""
    twins = {"index.html": "pt-br/index.html"}
    for notebook in ENGLISH:
        english, portuguese = post_page(site, notebook), post_page(site, notebook.parent / "pt-br" / notebook.name)
        twins[english.relative_to(site).as_posix()] = portuguese.relative_to(site).as_posix()
    assert len(twins) == len(ENGLISH) + 1 and len(PORTUGUESE) == len(ENGLISH)
    pages = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    assert pages == set(twins) | set(twins.values()), "a page of the site has no twin in the other language"
    for english, portuguese in twins.items():
        for here, there, lang in ((english, portuguese, "en"), (portuguese, english, "pt-br")):
            page = Page(site / here)
            assert page.all("html")[0]["lang"] == lang, here
            switch = page.all("a", **{"class": "translation-link"})
            assert len(switch) == 1, here
            assert switch[0]["href"] == f"{BASEURL}/{there}".removesuffix("index.html"), here
            assert switch[0]["lang"] == ("pt-BR" if lang == "en" else "en"), here
            home = page.all("a", **{"class": "site-title"})[0]["href"]
            assert home == (f"{BASEURL}/" if lang == "en" else f"{BASEURL}/pt-br/"), here


def test_the_feeds_list_both_editions_and_the_portuguese_one_alone(site):
    everything = (site / "feed.xml").read_text(encoding="utf-8")
    portuguese = (site / "feed" / "pt-br.xml").read_text(encoding="utf-8")
    assert everything.count("<entry") == len(NOTEBOOKS)
    assert everything.count('<entry xml:lang="pt-br"') == len(PORTUGUESE)
    assert portuguese.count("<entry") == len(PORTUGUESE) == portuguese.count('<entry xml:lang="pt-br"')
    for notebook in PORTUGUESE:
        assert f"{BASEURL}{NotebookPost.of(notebook).permalink}" in portuguese


def test_widget_views_have_no_static_leftovers(site):
    for notebook in NOTEBOOKS:
        text = Page(post_page(site, notebook)).text
        assert "interactive(children=" not in text and "widget-view" not in text and "NBVAL_" not in text
