"""The notebooks' header: "Open in Colab" and "Binder" links, and a cell that installs the package in Colab.

    python -m blog.notebook_header notebooks/01_config.ipynb notebooks/02_data_shift.ipynb
    python -m blog.notebook_header --check notebooks/0*.ipynb   # change nothing; exit 1 if a header is stale

Both cells are built from _config.yml (`repository:` OWNER/REPO and `branch:`), so the links follow the
repository the site is configured for. They are found again by their tags (`header-links`,
`colab-install`), so running the command twice changes nothing, and a new repository or branch in
_config.yml updates every header in place. A notebook without the header gets the links cell right
after its title cell and the install cell just below, as its first code cell.

The install cell imports nothing from the package (in Colab it is not installed yet) and prints nothing
outside Colab: it checks for the `google.colab` module and otherwise does nothing. A new install cell
has no stored run: re-execute the notebook afterwards (`make notebooks`), as after any edit.

`blog.posts` leaves the install cell out of the posts; the links stay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from .posts import INSTALL_TAG, ROOT, NotebookPost, SiteConfig

LINKS_TAG = "header-links"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"


def notebook_path(root: Path, notebook: Path) -> str:
    """The notebook's path in the repository, with forward slashes: notebooks/01_config.ipynb."""
    return notebook.resolve().relative_to(root.resolve()).as_posix()


def colab_url(config: SiteConfig, path: str) -> str:
    return f"https://colab.research.google.com/github/{config.repository}/blob/{config.branch}/{quote(path)}"


def binder_url(config: SiteConfig, path: str) -> str:
    branch = quote(config.branch, safe="")
    return f"https://mybinder.org/v2/gh/{config.repository}/{branch}?labpath={quote(path, safe='')}"


_RUN_IT = {
    "en": ("Run it in the browser: in Colab the first code cell installs the package; Binder builds the "
           "repository's environment for you (slower to start, sliders included)."),
    "pt-br": ("Rode no navegador: no Colab, a primeira célula de código instala o pacote; o Binder monta o "
              "ambiente do repositório para você (demora mais para abrir, e os controles deslizantes funcionam)."),
}


def links_source(config: SiteConfig, path: str, language: str = "en") -> str:
    if language not in _RUN_IT:
        raise ValueError(f"language {language!r} has no header text; known: {', '.join(_RUN_IT)}")
    return (f"[![Open In Colab]({COLAB_BADGE})]({colab_url(config, path)}) "
            f"[![Binder]({BINDER_BADGE})]({binder_url(config, path)})\n\n" + _RUN_IT[language])


def install_requirement(config: SiteConfig) -> str:
    """What pip installs in Colab: the package from the configured repository and branch."""
    return f"nanogpt-lib @ git+https://github.com/{config.repository}.git@{config.branch}"


def install_source(config: SiteConfig) -> str:
    return "\n".join([
        "# In Google Colab, install this repository's package first; anywhere else this cell does nothing.",
        "import subprocess",
        "import sys",
        "",
        'if "google.colab" in sys.modules:',
        f'    package = "{install_requirement(config)}"',
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)',
    ])


def _tagged(nb: nbformat.NotebookNode, tag: str) -> int | None:
    found = [i for i, cell in enumerate(nb.cells) if tag in cell.get("metadata", {}).get("tags", [])]
    if len(found) > 1:
        raise ValueError(f"{len(found)} cells are tagged {tag!r}; a notebook has one header")
    return found[0] if found else None


def apply_header(nb: nbformat.NotebookNode, config: SiteConfig, path: str, language: str = "en") -> bool:
    """Insert or update the two header cells of `nb` (in place), the links' sentence in `language`; True when
    something changed."""
    changed = False
    wanted = {LINKS_TAG: links_source(config, path, language), INSTALL_TAG: install_source(config)}
    for tag, make in ((LINKS_TAG, new_markdown_cell), (INSTALL_TAG, new_code_cell)):
        index = _tagged(nb, tag)
        if index is None:
            after = 0 if tag == LINKS_TAG else _tagged(nb, LINKS_TAG)
            nb.cells.insert(after + 1, make(wanted[tag], metadata={"tags": [tag]}))
            changed = True
        elif nb.cells[index].source != wanted[tag]:
            nb.cells[index].source = wanted[tag]
            changed = True
    return changed


def has_header(nb: nbformat.NotebookNode) -> bool:
    return _tagged(nb, LINKS_TAG) is not None or _tagged(nb, INSTALL_TAG) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blog.notebook_header", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a header is missing or stale")
    args = parser.parse_args(argv)
    config = SiteConfig.load(args.root)
    stale = []
    for notebook in args.notebooks:
        nb = nbformat.read(notebook, as_version=4)
        language = NotebookPost.of(notebook).language  # notebooks/pt-br/...: the Portuguese sentence
        if apply_header(nb, config, notebook_path(args.root, notebook), language):
            stale.append(notebook)
            if not args.check:
                nbformat.write(nb, notebook)
    verb = "stale" if args.check else "updated"
    for notebook in stale:
        print(f"{verb}: {notebook}")
    print(f"{len(stale)} of {len(args.notebooks)} notebook(s) {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
