"""Named corpora (nanogpt_lib/corpora.py): a local copy, the environment variable, the cache and the
download, each verified file by file against the package's checksums.

The texts are never in the repository: these tests read the shared copy (`NANOGPT_MACHADO_DIR`, set by
the root conftest.py when the copy is beside the clone) and never touch the network: the download is
served by a local HTTP server from that copy, under the upstream (accented) folder names.
"""

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
import unicodedata
import urllib.parse
from pathlib import Path

import pytest

from nanogpt_lib import corpora
from nanogpt_lib.corpora import MACHADO, CorpusError, corpus_dir, corpus_works, named_corpus

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NANOGPT_MACHADO_DIR") or ROOT.parent / "shared" / "corpora" / "machado")
GENRES = ("conto", "critica", "cronica", "miscelanea", "poesia", "romance", "teatro", "traducao")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def shared() -> Path:
    """The local copy of the corpus; skipped without it, except in CI where it must be there."""
    if not (SHARED / "SHA256SUMS").is_file():
        message = f"the Machado corpus is not at {str(SHARED)!r} (set NANOGPT_MACHADO_DIR to a copy)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


def copy_genres(shared: Path, target: Path, *genres: str) -> Path:
    """A writable copy of some genre folders (the shared files are read-only)."""
    for genre in genres:
        (target / genre).mkdir(parents=True)
        for f in sorted((shared / genre).glob("*.txt")):
            (target / genre / f.name).write_bytes(f.read_bytes())
    return target


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------ the package's description
def test_the_manifest_lists_the_shared_copy_file_for_file(shared):
    sums = {}
    for line in (shared / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            sums[path.removeprefix("./")] = digest
    assert len(sums) == 116
    assert MACHADO.checksums() == sums  # same files, same digests
    on_disk = sorted(str(p.relative_to(shared)) for p in shared.rglob("*.txt"))
    assert sorted(sums) == on_disk
    assert MACHADO.genres == GENRES and sorted({p.split("/")[0] for p in sums}) == list(GENRES)


def test_the_manifest_is_in_sha256sum_format():
    lines = [line for line in (ROOT / "nanogpt_lib" / "data" / "machado.sha256").read_text().splitlines() if line]
    assert len(lines) == 116
    for line in lines:
        digest, path = line.split("  ")
        assert len(digest) == 64 and int(digest, 16) >= 0 and path.startswith("./") and path.endswith(".txt")


def test_files_are_sorted_by_genre_then_name():
    files = MACHADO.files()
    assert len(files) == 116 and files == sorted(files)
    poetry = MACHADO.files(("poesia",))
    assert poetry == ["poesia/almada.txt", "poesia/americanas.txt", "poesia/crisalidas.txt", "poesia/dispersas.txt",
                      "poesia/falenas.txt", "poesia/gazeta.txt", "poesia/ocidentais.txt"]
    assert MACHADO.files(("poesia", "conto")) == MACHADO.files(("conto", "poesia"))  # a fixed order
    assert MACHADO.files(("poesia", "conto"))[0].startswith("conto/")


def test_the_url_quotes_the_accented_upstream_folders():
    base = MACHADO.base_url
    assert base.startswith("https://raw.githubusercontent.com/luxedo/dataset-machado-de-assis/a13ca4a7")
    assert MACHADO.url("miscelanea/estatua.txt") == base + "miscel%C3%A2nea/estatua.txt"
    assert MACHADO.url("traducao/oliverTwist.txt") == base + "tradu%C3%A7%C3%A3o/oliverTwist.txt"
    assert MACHADO.url("critica/x.txt") == base + "cr%C3%ADtica/x.txt"
    assert MACHADO.url("cronica/x.txt") == base + "cr%C3%B4nica/x.txt"
    assert MACHADO.url("poesia/almada.txt") == base + "poesia/almada.txt"
    # another base, with or without the final slash
    assert MACHADO.url("poesia/almada.txt", "http://h:1/x") == "http://h:1/x/poesia/almada.txt"
    assert MACHADO.url("poesia/almada.txt", "http://h:1/x/") == "http://h:1/x/poesia/almada.txt"


@pytest.mark.parametrize("genres, bad", [(("poesia", "novels"), "novels"), (("Poesia",), "Poesia"), ((), "[]")])
def test_an_unknown_genre_is_named_with_the_allowed_ones(genres, bad):
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=genres, download=False)
    message = one_line(exc)
    assert bad in message and "not allowed" in message and "'machado'" in message
    assert all(g in message for g in GENRES)


def test_an_unknown_corpus_is_named_with_the_known_ones(tmp_path):
    for call in (lambda: named_corpus("shakespeare"), lambda: corpus_dir("shakespeare", tmp_path)):
        with pytest.raises(CorpusError) as exc:
            call()
        assert one_line(exc) == "corpus 'shakespeare' is not known: choose one of ['machado']"
    assert issubclass(CorpusError, ValueError)  # the command lines report it as one line


# ------------------------------------------------------------------ a local copy
def test_a_complete_local_copy_is_verified_and_used(shared):
    assert corpus_dir("machado", shared) == shared
    assert corpus_dir("machado", str(shared), genres=("poesia",)) == shared


def test_corpus_works_gives_only_the_chosen_genres_in_order(shared):
    works = corpus_works("machado", shared, genres=("poesia",))
    assert [g for g, _ in works] == ["poesia"] * 7
    assert [p for _, p in works] == sorted((shared / "poesia").glob("*.txt"))
    both = corpus_works("machado", shared, genres=("poesia", "miscelanea"))
    assert [g for g, _ in both] == ["miscelanea"] * 10 + ["poesia"] * 7
    assert [p.name for _, p in both][:2] == ["cartaBispoRJ.txt", "cartaImprensa.txt"]
    assert all(p.is_file() and p.parent.name == g for g, p in both)


def test_the_environment_variable_names_the_copy(shared, tmp_path, monkeypatch):
    copy = copy_genres(shared, tmp_path / "copy", "miscelanea")
    monkeypatch.setenv("NANOGPT_MACHADO_DIR", str(copy))
    assert corpus_dir("machado", genres=("miscelanea",)) == copy
    works = corpus_works("machado", genres=("miscelanea",))
    assert len(works) == 10 and all(p.parent == copy / "miscelanea" for _, p in works)
    # a folder given by the caller comes first
    assert corpus_dir("machado", shared, genres=("poesia",)) == shared
    # the copy lacks the other genres: an error that says where the folder came from
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=("poesia",))
    message = one_line(exc)
    assert "$NANOGPT_MACHADO_DIR" in message and str(copy) in message and "lacks 7 of the 7 files" in message
    assert "poesia/almada.txt, poesia/americanas.txt, poesia/crisalidas.txt and 4 more" in message


def test_a_missing_file_is_named(shared, tmp_path):
    copy = copy_genres(shared, tmp_path / "copy", "miscelanea")
    (copy / "miscelanea" / "estatua.txt").unlink()
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", copy, genres=("miscelanea",))
    message = one_line(exc)
    assert "miscelanea/estatua.txt" in message and "lacks 1 of the 10 files" in message and str(copy) in message
    assert "cartaBispoRJ" not in message  # only the missing one


def test_a_changed_byte_is_a_checksum_error_naming_the_file(shared, tmp_path):
    copy = copy_genres(shared, tmp_path / "copy", "miscelanea")
    target = copy / "miscelanea" / "paixao.txt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", copy, genres=("miscelanea",))
    message = one_line(exc)
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert f"miscelanea/paixao.txt has SHA-256 {actual[:12]}" in message
    assert MACHADO.checksums()["miscelanea/paixao.txt"][:12] in message and "damaged" in message


def test_a_copy_of_one_genre_serves_that_genre_only(shared, tmp_path):
    copy = copy_genres(shared, tmp_path / "copy", "miscelanea")
    assert corpus_dir("machado", copy, genres=("miscelanea",)) == copy
    expected = r"lacks 106 of the 116 files of corpus 'machado' \(conto/contosFluminenses.txt, "
    with pytest.raises(CorpusError, match=expected):
        corpus_dir("machado", copy)


def test_a_path_that_is_not_a_folder_is_refused(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path / "file.txt", tmp_path / "nowhere"):
        with pytest.raises(CorpusError) as exc:
            corpus_dir("machado", path, genres=("poesia",))
        message = one_line(exc)
        assert f"{str(path)!r} is not a folder" in message and "conto/, critica/" in message


# ------------------------------------------------------------------ the cache and the download
class Upstream:
    """A local stand-in for the pinned source: serves the shared copy under the upstream folder names
    (accented, URL-quoted), counts requests, and can serve other bytes (or nothing) for some files."""

    def __init__(self, shared: Path):
        self.shared = shared
        self.requests: list[str] = []
        self.override: dict[str, bytes | None] = {}  # relative path -> bytes to serve (None: 404)
        self.truncate: set[str] = set()  # relative paths whose answer is cut short
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                upstream.requests.append(self.path)
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
                local = "".join(c for c in unicodedata.normalize("NFKD", path) if not unicodedata.combining(c))
                file = upstream.shared / local
                if local in upstream.override:
                    body = upstream.override[local]
                elif file.is_file() and upstream.shared.resolve() in file.resolve().parents:
                    body = file.read_bytes()
                else:
                    body = None
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if local in upstream.truncate else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def upstream(shared, monkeypatch):
    monkeypatch.delenv("NANOGPT_MACHADO_DIR", raising=False)  # else the shared copy is used, not the cache
    server = Upstream(shared)
    yield server
    server.close()


TWO_GENRES = ("miscelanea", "poesia")


def test_a_download_fills_the_cache_once(upstream, shared, tmp_path):
    cache = tmp_path / "cache"
    folder = corpus_dir("machado", genres=TWO_GENRES, base_url=upstream.url, cache=cache)
    assert folder == cache
    expected = MACHADO.files(TWO_GENRES)
    assert len(expected) == 17 and len(upstream.requests) == 17
    assert "/miscel%C3%A2nea/estatua.txt" in upstream.requests  # the upstream folder name, quoted
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == expected  # no temp files
    for relative in expected:
        assert (cache / relative).read_bytes() == (shared / relative).read_bytes()
    # a second call finds everything in the cache: no request
    works = corpus_works("machado", genres=TWO_GENRES, base_url=upstream.url, cache=cache)
    assert [p for _, p in works] == [cache / f for f in expected] and len(upstream.requests) == 17
    assert corpus_dir("machado", genres=("poesia",), cache=cache, download=False) == cache
    # a damaged cached file is fetched again, and only that one
    damaged = cache / "poesia" / "falenas.txt"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    corpus_dir("machado", genres=TWO_GENRES, base_url=upstream.url, cache=cache)
    assert upstream.requests[17:] == ["/poesia/falenas.txt"]
    assert damaged.read_bytes() == (shared / "poesia" / "falenas.txt").read_bytes()


def test_the_default_cache_is_under_nanogpt_cache(tmp_path, monkeypatch, upstream):
    monkeypatch.setenv("NANOGPT_CACHE", str(tmp_path / "c"))
    assert corpora.cache_root() == tmp_path / "c"
    folder = corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url)
    assert folder == tmp_path / "c" / "corpora" / "machado" and len(upstream.requests) == 10
    monkeypatch.delenv("NANOGPT_CACHE")
    assert corpora.cache_root() == Path.home() / ".cache" / "nanogpt_lib"


def test_wrong_bytes_are_refused_and_not_kept(upstream, tmp_path):
    cache = tmp_path / "cache"
    upstream.override["miscelanea/estatua.txt"] = b"another edition\n"
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=TWO_GENRES, base_url=upstream.url, cache=cache)
    message = one_line(exc)
    bad = hashlib.sha256(b"another edition\n").hexdigest()[:12]
    assert f"{upstream.url}miscel%C3%A2nea/estatua.txt has SHA-256 {bad}" in message and "refusing" in message
    assert not any("estatua" in p.name for p in cache.rglob("*"))  # neither the file nor a temp file
    assert not (cache / "poesia").exists()  # stopped at the first bad file
    # once the source is right again, the next call completes the cache
    del upstream.override["miscelanea/estatua.txt"]
    corpus_dir("machado", genres=TWO_GENRES, base_url=upstream.url, cache=cache)
    assert (cache / "miscelanea" / "estatua.txt").is_file() and (cache / "poesia" / "almada.txt").is_file()


def test_a_missing_upstream_file_is_named(upstream, tmp_path):
    upstream.override["miscelanea/imortais.txt"] = None  # 404
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url, cache=tmp_path / "cache")
    message = one_line(exc)
    assert "could not download" in message and "miscel%C3%A2nea/imortais.txt" in message and "--corpus-dir" in message
    assert not (tmp_path / "cache" / "miscelanea" / "imortais.txt").exists()


def test_a_download_cut_short_is_refused(upstream, tmp_path):
    upstream.truncate.add("miscelanea/quedaMulheres.txt")
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url, cache=tmp_path / "cache")
    message = one_line(exc)
    assert "could not download" in message and "quedaMulheres.txt" in message and "IncompleteRead" in message
    assert not any("quedaMulheres" in p.name for p in (tmp_path / "cache").rglob("*"))


def test_no_server_is_an_error_pointing_to_a_local_copy(shared, tmp_path, monkeypatch):
    monkeypatch.delenv("NANOGPT_MACHADO_DIR", raising=False)
    with socket.socket() as s:  # a port nothing listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=("miscelanea",), base_url=f"http://127.0.0.1:{port}/", cache=tmp_path / "cache")
    message = one_line(exc)
    assert f"could not download http://127.0.0.1:{port}/miscel%C3%A2nea/" in message
    assert "--corpus-dir" in message and "$NANOGPT_MACHADO_DIR" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_no_download_with_an_empty_cache_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOGPT_MACHADO_DIR", raising=False)
    monkeypatch.setattr(corpora.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no network"))
    with pytest.raises(CorpusError) as exc:
        corpus_dir("machado", genres=("poesia",), download=False, cache=tmp_path / "cache")
    message = one_line(exc)
    assert f"not in the cache {str(tmp_path / 'cache')!r} and downloading is off" in message
    assert "--corpus-dir" in message


def test_a_partial_cache_without_download_is_an_error(upstream, tmp_path):
    cache = tmp_path / "cache"
    corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url, cache=cache)
    with pytest.raises(CorpusError, match="downloading is off"):
        corpus_dir("machado", genres=TWO_GENRES, download=False, cache=cache)
    assert len(upstream.requests) == 10


def test_the_shared_copy_is_found_through_the_root_conftest(shared):
    """The root conftest.py (and .ci/run) set NANOGPT_MACHADO_DIR, so the tests never download."""
    assert os.environ.get("NANOGPT_MACHADO_DIR") and Path(os.environ["NANOGPT_MACHADO_DIR"]).samefile(shared)
    assert corpus_dir("machado", genres=("miscelanea",)).samefile(shared)


def test_copies_of_the_shared_files_are_not_committed():
    """The texts are never in the repository (only their checksums)."""
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    names = {Path(f).name for f in MACHADO.files()}
    assert not [f for f in tracked if Path(f).name in names and f.endswith(".txt")]


def test_a_write_that_fails_half_way_leaves_nothing_under_the_name(upstream, tmp_path, monkeypatch):
    """The file is written beside its name and renamed when complete (a full disk, a kill mid-write)."""
    cache = tmp_path / "cache"
    real = Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url, cache=cache)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no half file, no temp file
    monkeypatch.setattr(Path, "write_bytes", real)
    assert corpus_dir("machado", genres=("miscelanea",), base_url=upstream.url, cache=cache) == cache
