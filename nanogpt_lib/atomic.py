"""Atomic file writes: write beside the target, flush it to disk, then rename over it.

`os.replace` within one folder is atomic, so readers see either the old file or the complete new
one, never a half-written file, even if the process dies mid-write. The new file is fsync'ed
before the rename and the folder after it, so a power cut cannot leave an empty file under the
real name either.

The temporary file is `.NAME.PID.RANDOM.tmp`. It is removed on every failure path; a process
killed mid-write (kill -9) cannot remove its own, so the next write of the same target removes
those whose process is no longer running on this machine.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{str(path)!r} exists and is not a regular file (a folder, device or pipe); "
                         f"it cannot be replaced by a saved file: choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Remove the temporary files of earlier writes of `path` whose process has died; returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 :].split(".")  # [pid, random, "tmp"]: not another target's
        if len(parts) == 3 and parts[0].isdigit() and not _running(int(parts[0])):
            with suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier write of this process failed without cleaning up: not in use now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # a folder that cannot be opened (some platforms): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some file systems refuse fsync on folders; a file's must succeed
            raise
    finally:
        os.close(fd)
