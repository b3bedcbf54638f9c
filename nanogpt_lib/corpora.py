"""Named corpora the project uses but does not ship: where the text comes from, how a copy is checked,
and where it is read.

The package holds a corpus's name, its pinned source, its file list and a SHA-256 checksum per file,
never the text. `corpus_dir` finds a copy in this order:

1. a folder given by the caller (`--corpus-dir` on the command line);
2. the folder in the corpus's environment variable (`NANOGPT_MACHADO_DIR` for Machado);
3. the cache (`$NANOGPT_CACHE/corpora/NAME`, default `~/.cache/nanogpt_lib/corpora/NAME`), where the
   files are downloaded from the pinned source on first use (or from `base_url` when given).

Every file the caller asks for is verified against its checksum, whichever way it was found; a
missing file or a wrong checksum is an error that names the file, never a silent fallback.

    folder = corpus_dir("machado")                       # all works, verified
    works = corpus_works("machado", genres=("romance",)) # [(genre, Path), ...] of the novels
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .atomic import atomic_path


class CorpusError(ValueError):
    """A named corpus that cannot be found, downloaded or verified."""


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus known by name: its pinned source, file list and checksums (in the package)."""

    name: str
    title: str  # what it is, in words (printed wherever the corpus is used)
    source: str  # where the files come from, for a reader
    base_url: str  # files are downloaded from base_url + upstream path
    env: str  # environment variable that may name a local copy
    manifest: str  # package file with "sha256  ./genre/file.txt" lines (the format of sha256sum)
    upstream_folders: tuple[tuple[str, str], ...]  # (local genre folder, upstream folder) pairs
    genre_names: tuple[tuple[str, str], ...]  # (genre folder, English name)

    def checksums(self) -> dict[str, str]:
        """{relative path ('romance/domCasmurro.txt'): sha256 hex digest}, in the manifest's order."""
        text = (resources.files("nanogpt_lib") / "data" / self.manifest).read_text(encoding="utf-8")
        sums = {}
        for line in text.splitlines():
            if line.strip():
                digest, path = line.split(maxsplit=1)
                sums[path.removeprefix("./")] = digest
        return sums

    @property
    def genres(self) -> tuple[str, ...]:
        return tuple(local for local, _ in self.upstream_folders)

    def files(self, genres: Sequence[str] | None = None) -> list[str]:
        """Relative paths of the works of `genres` (all when None), sorted by genre then name."""
        if isinstance(genres, str):
            raise CorpusError(f"genres={genres!r} is not allowed: give a list of genres, e.g. [{genres!r}]")
        chosen = self.genres if genres is None else tuple(genres)
        unknown = [g for g in chosen if g not in self.genres]
        if unknown or not chosen:
            raise CorpusError(f"genres {list(chosen)!r} are not allowed for corpus {self.name!r}: "
                              f"choose from {list(self.genres)}")
        return sorted(p for p in self.checksums() if p.split("/", 1)[0] in chosen)

    def url(self, relative: str, base_url: str | None = None) -> str:
        """Where one file is downloaded from (the upstream folder names carry accents)."""
        genre, name = relative.split("/", 1)
        upstream = dict(self.upstream_folders)[genre]
        base = (base_url or self.base_url).rstrip("/") + "/"
        return base + urllib.parse.quote(f"{upstream}/{name}")


MACHADO = NamedCorpus(
    name="machado",
    title="Machado de Assis, complete works (116 works, public domain)",
    source="machado.mec.gov.br 'Obra Completa', as text in github.com/luxedo/dataset-machado-de-assis "
           "at commit a13ca4a7 (folder txt/)",
    base_url="https://raw.githubusercontent.com/luxedo/dataset-machado-de-assis/"
             "a13ca4a72f268f46db64804a67930d4c0f6db8e7/txt/",
    env="NANOGPT_MACHADO_DIR",
    manifest="machado.sha256",
    upstream_folders=(("conto", "conto"), ("critica", "crítica"), ("cronica", "crônica"),
                      ("miscelanea", "miscelânea"), ("poesia", "poesia"), ("romance", "romance"),
                      ("teatro", "teatro"), ("traducao", "tradução")),
    genre_names=(("conto", "short stories"), ("critica", "criticism"), ("cronica", "crônicas (columns)"),
                 ("miscelanea", "miscellany"), ("poesia", "poetry"), ("romance", "novels"),
                 ("teatro", "plays"), ("traducao", "translations")),
)
CORPORA = {MACHADO.name: MACHADO}


def named_corpus(name: str) -> NamedCorpus:
    if name not in CORPORA:
        raise CorpusError(f"corpus {name!r} is not known: choose one of {sorted(CORPORA)}")
    return CORPORA[name]


def cache_root() -> Path:
    """Where downloaded corpora live: $NANOGPT_CACHE, else ~/.cache/nanogpt_lib."""
    root = os.environ.get("NANOGPT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "nanogpt_lib"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path, corpus: NamedCorpus, files: Sequence[str], where: str) -> None:
    """Check that every file exists in `folder` with its published checksum; one-line errors otherwise."""
    sums = corpus.checksums()
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CorpusError(f"{where} {str(folder)!r} lacks {len(missing)} of the {len(files)} files of corpus "
                          f"{corpus.name!r} ({', '.join(missing[:3])}{more}); give a complete copy")
    for f in files:
        actual = sha256_file(folder / f)
        if actual != sums[f]:
            raise CorpusError(f"{where} {str(folder)!r}: {f} has SHA-256 {actual[:12]}..., not the published "
                              f"{sums[f][:12]}...; the copy is damaged or another edition (fetch it again)")


def corpus_dir(name: str, local: str | Path | None = None, *, genres: Sequence[str] | None = None,
               download: bool = True, base_url: str | None = None, cache: str | Path | None = None) -> Path:
    """A verified folder holding the works of `genres` of corpus `name` (see the module docstring)."""
    corpus = named_corpus(name)
    files = corpus.files(genres)
    if local is None and os.environ.get(corpus.env):
        local, where = os.environ[corpus.env], f"the folder in ${corpus.env}"
    else:
        where = "the corpus folder"
    if local is not None:
        folder = Path(local)
        if not folder.is_dir():
            raise CorpusError(f"{where} {str(folder)!r} is not a folder; give the folder that holds "
                              f"{corpus.genres[0]}/, {corpus.genres[1]}/, ...")
        verify(folder, corpus, files, where)
        return folder
    folder = Path(cache) if cache is not None else cache_root() / "corpora" / corpus.name
    sums = corpus.checksums()
    todo = [f for f in files if not (folder / f).is_file() or sha256_file(folder / f) != sums[f]]
    if todo and not download:
        raise CorpusError(f"corpus {corpus.name!r} is not in the cache {str(folder)!r} and downloading is off; "
                          f"give a local copy with --corpus-dir or ${corpus.env}")
    for relative in todo:  # each checked against its checksum before it lands; the others were checked above
        _download(corpus, relative, folder / relative, sums[relative], base_url)
    return folder


def _download(corpus: NamedCorpus, relative: str, target: Path, sha256: str, base_url: str | None) -> None:
    """Fetch one file into `target` (temp file + rename), refusing content with the wrong checksum."""
    url = corpus.url(relative, base_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:  # HTTPException: cut short
        reason = getattr(err, "reason", err)
        raise CorpusError(f"could not download {url} ({reason}); without network, give a local copy of corpus "
                          f"{corpus.name!r} with --corpus-dir or ${corpus.env}") from None
    actual = hashlib.sha256(body).hexdigest()
    if actual != sha256:
        raise CorpusError(f"{url} has SHA-256 {actual[:12]}..., not the published {sha256[:12]}...; "
                          f"refusing it (the source changed or the download was cut)")
    with atomic_path(target) as tmp:
        tmp.write_bytes(body)


def corpus_works(name: str, local: str | Path | None = None, *, genres: Sequence[str] | None = None,
                 **kwargs) -> list[tuple[str, Path]]:
    """[(genre, path), ...] of the verified works of `genres`, in a fixed order (genre, then file name)."""
    folder = corpus_dir(name, local, genres=genres, **kwargs)
    return [(relative.split("/", 1)[0], folder / relative) for relative in named_corpus(name).files(genres)]
