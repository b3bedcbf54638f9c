"""Where a command writes: checked before any work starts, so no option can destroy an input.

Every output path must be writable and of the right kind: an existing one is a regular file (or
a folder where a folder is meant), the nearest existing parent is a writable folder. No output
may be equal to, inside, or a parent of an input or of another output: `--checkpoint DATA/train.bin`
or `--text-file X --checkpoint X` are refused before anything is read. An existing checkpoint is
replaced only when the user says so (`--resume` it, or `--overwrite`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

Paths = Mapping[str, "str | Path | None"]  # option name -> path (None: not given)


def check_outputs(outputs: Paths, inputs: Paths | None = None, *, folders: Collection[str] = ()) -> None:
    """Raise ValueError naming the option and the path when an output could not or must not be written.

    `outputs` and `inputs` map option names ('--checkpoint') to paths; `folders` names the outputs
    that are folders (`--out`). Nothing is created.
    """
    given_out = {k: Path(v) for k, v in outputs.items() if v is not None}
    given_in = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
    for option, path in given_out.items():
        _check_kind(option, path, folder=option in folders)
        _check_parent(option, path)
    for option, path in given_out.items():
        others = [(k, v, "input") for k, v in given_in.items()]
        others += [(k, v, "output") for k, v in given_out.items() if k != option]
        for other, where, role in others:
            relation = _relation(path, where)
            if relation is not None:
                raise ValueError(f"{option} {str(path)!r} {relation} the {role} {other} {str(where)!r}; "
                                 f"an output must be apart from every input and other output: choose another path")


def check_not_replacing(option: str, path: str | Path | None, *, resume: str | Path | None = None,
                        overwrite: bool = False) -> None:
    """Refuse to replace an existing file by a new run, unless it is the one resumed or `overwrite`."""
    if path is None or overwrite or not Path(path).exists():
        return
    if resume is not None and same_file(Path(path), Path(resume)):
        return
    raise ValueError(f"{option} {str(path)!r} already exists (a run saved there); continue it with "
                     f"--resume {path}, choose another path, or pass --overwrite to replace it")


def _check_kind(option: str, path: Path, folder: bool) -> None:
    if not path.exists():
        return
    if folder and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file; give a folder")
    if not folder and path.is_dir():
        example = path / ("run.pt" if option == "--checkpoint" else "out.png")
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name such as {str(example)!r}")
    if not folder and not path.is_file():
        raise ValueError(f"{option} {str(path)!r} is not a regular file (a device, pipe or socket); "
                         f"give the path of a file to write")


def _check_parent(option: str, path: Path) -> None:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, so nothing can be created below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r}: the folder {str(parent)!r} is not writable")


def _relation(output: Path, other: Path) -> str | None:
    """How `output` overlaps `other` ('is', 'is inside', 'contains'), or None when they are apart."""
    if same_file(output, other):
        return "is"
    out, oth = output.resolve(), other.resolve()
    if oth in out.parents:
        return "is inside"
    if out in oth.parents:
        return "contains"
    return None


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (hard links and symlinks included), existing or not."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
