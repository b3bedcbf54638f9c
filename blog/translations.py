"""The series in another language: committed translations of the notebooks' prose, and the notebooks built from them.

    python -m blog.translations template pt-br      # add every untranslated cell (its English text) to the files
    python -m blog.translations check pt-br         # exit 1 naming each missing, stale or untranslated cell
    python -m blog.translations accept pt-br 05 ID  # the text of cell ID of notebook 05 now translates its English
    python -m blog.translations build pt-br         # write and execute notebooks/pt-br/NN_name.ipynb
    python -m blog.translations build pt-br --check # change nothing; exit 1 if a built notebook is stale
    python -m blog.translations build pt-br --force # execute them all (after `make notebooks` changed outputs)

A translation is a file per notebook, notebooks/translations/LANG/NN_name.md, beside the English notebook it
translates. It holds, for each Markdown cell (by its cell id) and for each figure's alt text (the `# alt: ...`
lines of the code cell that draws it, by CELLID-altN), the translated text and the SHA-256 of the English
text it was written from:

    <!-- cell 3f1c0a2e en-sha256 9b74c9897bac770f -->
    ## O roteador
    ...

Change an English cell and its hash no longer matches: `check` (and tests/test_translations.py) fail until the
translation is updated and `accept`ed. Nothing is translated by machine, at run time or over the network.

A translated notebook is the English one with each Markdown cell and alt text replaced by its translation, the Colab and
Binder header pointing at the translated notebook, and one more code cell below the install cell that sets
the figures' language (`plots.set_language`). Its code cells are the English ones, so its printed outputs are
the English outputs; `build` executes it (as `make notebooks` does the English ones), so its figures are drawn
with titles, axes and legends in the edition's language. A built notebook is stale when its sources differ
from what the translation gives, or its printed outputs from the English notebook's.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import posixpath
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
from nbformat.v4 import new_code_cell

from nanogpt_lib.atomic import atomic_path

from .markdown import rewrite_link_targets, transform_prose
from .notebook_header import LINKS_TAG, apply_header, notebook_path
from .posts import ALT_MORE, ALT_START, INSTALL_TAG, LANGUAGE_TAG, ROOT, SiteConfig, numbered_notebooks, split_alt_texts

LANGUAGES = ("pt-br",)
TRANSLATIONS = "notebooks/translations"
HASH_CHARS = 16
_MARKER = re.compile(r"^<!-- cell (?P<id>[A-Za-z0-9_-]+) en-sha256 (?P<hash>[0-9a-f]+) -->[ \t]*$", re.MULTILINE)
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_FILE_HEADER = ("<!-- The {language} text of {notebook}'s Markdown cells, one section per cell: the cell id and the "
                "SHA-256 of the English text translated. Written by hand; see blog/translations.py. -->\n")


def english_hash(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of a cell's English text (its source, as stored)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} has no edition; the editions are {', '.join(LANGUAGES)}")
    return language


@dataclass(frozen=True)
class Entry:
    text: str  # the translated Markdown
    english_hash: str  # english_hash of the English text it translates


def translation_path(root: Path, language: str, notebook: Path) -> Path:
    return root / TRANSLATIONS / check_language(language) / f"{notebook.stem}.md"


def translated_notebook_path(root: Path, language: str, notebook: Path) -> Path:
    return root / "notebooks" / check_language(language) / notebook.name


def parse(text: str, where: str = "translation") -> dict[str, Entry]:
    """The entries of a translation file, by cell id. A repeated cell id is an error."""
    markers = list(_MARKER.finditer(text))
    entries: dict[str, Entry] = {}
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        body = text[marker.end(): following.start() if following else len(text)].strip("\n")
        if marker["id"] in entries:
            raise ValueError(f"{where}: cell {marker['id']} is translated twice")
        if len(marker["hash"]) != HASH_CHARS:
            raise ValueError(f"{where}: cell {marker['id']} has hash {marker['hash']!r}; "
                             f"expected {HASH_CHARS} hex digits")
        entries[marker["id"]] = Entry(body, marker["hash"])
    return entries


def render(entries: dict[str, Entry], language: str, notebook: str) -> str:
    """A translation file's text: the header, then one section per entry, in the given order."""
    sections = [f"<!-- cell {cell_id} en-sha256 {entry.english_hash} -->\n{entry.text}\n"
                for cell_id, entry in entries.items()]
    return _FILE_HEADER.format(language=language, notebook=notebook) + "\n" + "\n".join(sections)


def load(root: Path, language: str, notebook: Path) -> dict[str, Entry]:
    path = translation_path(root, language, notebook)
    if not path.is_file():
        return {}
    return parse(path.read_text(encoding="utf-8"), str(path.relative_to(root)))


def translatable_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The Markdown cells a translation covers: all but the generated header links."""
    return [cell for cell in nb.cells
            if cell.cell_type == "markdown" and LINKS_TAG not in cell.get("metadata", {}).get("tags", [])]


def alt_id(cell_id: str, index: int) -> str:
    return f"{cell_id}-alt{index}"


def english_texts(nb: nbformat.NotebookNode) -> dict[str, str]:
    """What a translation covers, in notebook order, by section id: each Markdown cell's text (by cell id), and
    each figure's alt text, written as `# alt: ...` lines in the code cell that draws it (by CELLID-altN)."""
    texts: dict[str, str] = {}
    markdown = {id(cell) for cell in translatable_cells(nb)}
    for cell in nb.cells:
        if id(cell) in markdown:
            texts[cell.id] = cell.source
        elif cell.cell_type == "code":
            alts, _ = split_alt_texts(cell.source)
            texts.update({alt_id(cell.id, i): alt for i, alt in enumerate(alts)})
    return texts


def replace_alt_texts(source: str, alts: list[str], width: int = 110) -> str:
    """`source` with its `# alt:` lines (and their continuations) replaced by `alts`, in order, each wrapped
    into a `# alt:` line and `#   ` continuation lines of at most `width` characters."""
    lines, out, index, continuing = source.split("\n"), [], 0, False
    for line in lines:
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(ALT_START):
            wrapped = textwrap.wrap(alts[index], width=width - len(indent) - 6)
            out += [f"{indent}# alt: {wrapped[0]}"] + [f"{indent}#   {more}" for more in wrapped[1:]]
            index, continuing = index + 1, True
        elif continuing and stripped.startswith(ALT_MORE) and stripped[len(ALT_MORE):].strip():
            continue
        else:
            continuing = False
            out.append(line)
    if index != len(alts):
        raise ValueError(f"{index} alt line(s) in the cell but {len(alts)} alt text(s) to put there")
    return "\n".join(out)


_WORD = re.compile(r"[^\W\d_]{3,}")


def has_prose(text: str) -> bool:
    """True when `text` holds words outside code, math and link targets (so it has something to translate)."""
    masked = transform_prose(text, lambda prose: re.sub(r"\]\([^)]*\)", "]", prose))
    masked = re.sub(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", "", masked, flags=re.DOTALL)
    return bool(_WORD.search(masked))


@dataclass(frozen=True)
class Problem:
    notebook: str
    cell_id: str
    kind: str  # missing | stale | untranslated | extra

    def __str__(self) -> str:
        advice = {"missing": "no translation (run `template`)",
                  "stale": "its English text changed since it was translated (update it, then `accept`)",
                  "untranslated": "still the English text",
                  "extra": "no such Markdown cell in the English notebook (remove the section)"}
        return f"{self.notebook}, cell {self.cell_id}: {advice[self.kind]}"


def problems(root: Path, language: str, notebook: Path) -> list[Problem]:
    english = english_texts(nbformat.read(notebook, as_version=4))
    entries = load(root, language, notebook)
    found: list[Problem] = []
    for section, text in english.items():
        entry = entries.get(section)
        if entry is None:
            found.append(Problem(notebook.name, section, "missing"))
        elif entry.english_hash != english_hash(text):
            found.append(Problem(notebook.name, section, "stale"))
        elif entry.text.strip() == text.strip() and has_prose(text):
            found.append(Problem(notebook.name, section, "untranslated"))
    found += [Problem(notebook.name, section, "extra") for section in entries if section not in english]
    return found


def add_missing(root: Path, language: str, notebook: Path) -> int:
    """Add a section holding the English text for each cell (or alt text) without one, in notebook order; the
    number added."""
    entries = load(root, language, notebook)
    merged: dict[str, Entry] = {}
    added = 0
    for section, text in english_texts(nbformat.read(notebook, as_version=4)).items():
        if section in entries:
            merged[section] = entries.pop(section)
        else:
            merged[section] = Entry(text, english_hash(text))
            added += 1
    merged.update(entries)  # sections of cells that are gone stay, for `check` to name
    if added:
        path = translation_path(root, language, notebook)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(render(merged, language, f"notebooks/{notebook.name}"), encoding="utf-8")
    return added


def accept(root: Path, language: str, notebook: Path, cell_ids: list[str]) -> None:
    """Record that the named cells' translations now translate the current English text."""
    english = english_texts(nbformat.read(notebook, as_version=4))
    entries = load(root, language, notebook)
    for cell_id in cell_ids:
        if cell_id not in entries or cell_id not in english:
            raise ValueError(f"{notebook.name}: cell {cell_id!r} is not both translated and a Markdown cell "
                             f"of the English notebook")
        entries[cell_id] = Entry(entries[cell_id].text, english_hash(english[cell_id]))
    with atomic_path(translation_path(root, language, notebook)) as tmp:
        tmp.write_text(render(entries, language, f"notebooks/{notebook.name}"), encoding="utf-8")


def relink(text: str) -> str:
    """Relative links of a translated cell, for a notebook one folder deeper (notebooks/LANG/): a link to a
    numbered notebook stays (it finds the translated one), anything else gets one more `../`."""
    def one(target: str) -> str:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path or target.startswith("/"):
            return target
        if re.fullmatch(r"\d\d_[\w-]+\.ipynb", parts.path):
            return target
        return posixpath.join("..", target)

    return transform_prose(text, lambda prose: rewrite_link_targets(prose, one), kramdown_math=False)


SANITIZE = "tests/nbval_sanitize.cfg"  # what the notebook tests replace before comparing (durations, float noise)


def load_sanitizers(root: Path) -> list[tuple[re.Pattern, str]]:
    """The (regex, replacement) pairs of the notebook tests' sanitize file, in order."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / SANITIZE, encoding="utf-8")
    return [(re.compile(parser[name]["regex"]), parser[name]["replace"]) for name in parser.sections()]


def comparable_outputs(nb: nbformat.NotebookNode,
                       sanitizers: list[tuple[re.Pattern, str]] = ()) -> dict[str, list[str]]:
    """The text outputs of each code cell (by id) that the notebook tests compare, after `sanitizers`: not
    those of cells whose output is ignored (timings, widgets), not images (a translated figure differs), not
    widget views."""
    found: dict[str, list[str]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in cell.source:
            continue
        texts = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out.get("text", ""))
            elif "data" in out and _WIDGET_VIEW not in out["data"]:
                texts += [str(out["data"][kind]) for kind in ("text/plain", "text/markdown", "text/html")
                          if kind in out["data"]]
        for pattern, replacement in sanitizers:
            texts = [pattern.sub(replacement, text) for text in texts]
        found[cell.id] = texts
    return found


def language_source(language: str) -> str:
    return "\n".join([
        f"# The {language} edition: figures with titles, axes and legends in the reader's language.",
        "from nanogpt_lib import plots",
        "",
        f'plots.set_language("{language}")',
    ])


def translated_notebook(root: Path, language: str, notebook: Path) -> nbformat.NotebookNode:
    """The translated notebook's cells (without outputs for the code: `build` executes it)."""
    found = problems(root, language, notebook)
    if found:
        raise ValueError(f"{len(found)} translation problem(s); first: {found[0]}")
    nb = nbformat.read(notebook, as_version=4)
    entries = load(root, language, notebook)
    for cell in translatable_cells(nb):
        cell.source = relink(entries[cell.id].text)
    for cell in nb.cells:
        if cell.cell_type == "code":
            alts, _ = split_alt_texts(cell.source)
            if alts:  # the figure's description, for the post's readers, in their language
                cell.source = replace_alt_texts(cell.source, [entries[alt_id(cell.id, i)].text
                                                              for i in range(len(alts))])
            cell.outputs = []
            cell.execution_count = None
    target = translated_notebook_path(root, language, notebook)
    apply_header(nb, SiteConfig.load(root), notebook_path(root, target), language=language)
    install = next(i for i, cell in enumerate(nb.cells) if INSTALL_TAG in cell.get("metadata", {}).get("tags", []))
    cell = new_code_cell(language_source(language), metadata={"tags": [LANGUAGE_TAG]})
    cell.id = f"{LANGUAGE_TAG}-{language}"
    nb.cells.insert(install + 1, cell)
    nb.metadata["language_edition"] = language
    return nb


def same_outputs(translated: nbformat.NotebookNode, english: nbformat.NotebookNode, root: Path = ROOT) -> bool:
    """True when every compared output of the English notebook's cells is the same in the translated one, as
    the notebook tests compare them (after the sanitize file's replacements)."""
    sanitizers = load_sanitizers(root)
    mine = comparable_outputs(translated, sanitizers)
    return all(mine.get(cell_id) == texts for cell_id, texts in comparable_outputs(english, sanitizers).items())


def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    return [(cell.id, cell.cell_type, cell.source) for cell in nb.cells]


def execute(nb: nbformat.NotebookNode, folder: Path) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=1200, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(folder)}}).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blog.translations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("template", "check", "accept", "build"):
        sub = commands.add_parser(name)
        sub.add_argument("language", choices=LANGUAGES)
        if name == "accept":
            sub.add_argument("number", help="the notebook's NN")
            sub.add_argument("cells", nargs="+", help="cell ids")
        if name in ("check", "build"):
            sub.add_argument("numbers", nargs="*", help="only these notebooks (NN); default all")
            sub.add_argument("--check", action="store_true", help="change nothing; exit 1 if one is stale")
            sub.add_argument("--force", action="store_true", help="execute every one, stale or not")
    args = parser.parse_args(argv)
    notebooks = numbered_notebooks(args.root)
    if getattr(args, "numbers", None):
        notebooks = [n for n in notebooks if n.name[:2] in args.numbers]
    if args.command == "template":
        for notebook in notebooks:
            print(f"{notebook.name}: {add_missing(args.root, args.language, notebook)} cell(s) added")
        return 0
    if args.command == "check":
        found = [p for notebook in notebooks for p in problems(args.root, args.language, notebook)]
        for problem in found:
            print(problem)
        print(f"{len(found)} problem(s)")
        return 1 if found else 0
    if args.command == "accept":
        chosen = [n for n in notebooks if n.name.startswith(f"{args.number}_")]
        if len(chosen) != 1:
            raise SystemExit(f"no notebook numbered {args.number!r}")
        accept(args.root, args.language, chosen[0], args.cells)
        return 0
    stale = []
    for notebook in notebooks:
        wanted = translated_notebook(args.root, args.language, notebook)
        target = translated_notebook_path(args.root, args.language, notebook)
        current = nbformat.read(target, as_version=4) if target.is_file() else None
        english = nbformat.read(notebook, as_version=4)
        if (current is not None and not args.force and sources(current) == sources(wanted)
                and same_outputs(current, english, args.root)):
            continue
        stale.append(target)
        if args.check:
            print(f"stale: {target.relative_to(args.root)}")
            continue
        print(f"executing {target.relative_to(args.root)}", flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        execute(wanted, target.parent)
        with atomic_path(target) as tmp:
            nbformat.write(wanted, str(tmp))
    print(f"{len(stale)} of {len(notebooks)} translated notebook(s) {'stale' if args.check else 'built'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
