"""How a notebook cell marked `# NBVAL_TOLERANCE rel=R` is compared with its stored output.

The rule (what a stored output may contain) is written in the root `conftest.py`, which installs this
hook for every pytest run, and in the README's "Tests" section.
"""
from __future__ import annotations

import re

from nbval.plugin import IPyNbCell

TOLERANCE_MARKER = re.compile(r"^#\s*NBVAL_TOLERANCE\s+rel=(\S+)\s*$", re.MULTILINE)
# a number as the notebooks print it: 1,330,432 or 819.8 or -0.03 (a sign only after a non-word character)
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def cell_tolerance(source: str) -> float | None:
    """The relative tolerance a cell's marker states, or None for a cell compared as printed."""
    match = TOLERANCE_MARKER.search(source)
    if match is None:
        return None
    rel = float(match.group(1))
    if not 0 < rel < 1:
        raise ValueError(f"NBVAL_TOLERANCE rel={match.group(1)}: must be a fraction between 0 and 1")
    return rel


def snap_within_tolerance(stored: str, fresh: str, rel: float) -> str:
    """`stored` when `fresh` says the same within `rel`, else `fresh` (for nbval to report the difference).

    "The same": the text around the numbers is identical (up to the padding of aligned columns, which a
    number's width can change), whole numbers are equal, and each decimal number lies within `rel` of
    the stored one, relative to it.
    """
    stored_numbers, fresh_numbers = NUMBER.findall(stored), NUMBER.findall(fresh)
    if len(stored_numbers) != len(fresh_numbers):
        return fresh
    if [" ".join(p.split()) for p in NUMBER.split(stored)] != [" ".join(p.split()) for p in NUMBER.split(fresh)]:
        return fresh
    for old, new in zip(stored_numbers, fresh_numbers, strict=True):
        if "." not in old and "." not in new:
            if old != new:  # counts are exact
                return fresh
            continue
        a, b = float(old.replace(",", "")), float(new.replace(",", ""))
        if abs(b - a) > rel * abs(a):
            return fresh
    return stored


def _snap_output(stored, fresh, rel: float) -> None:
    """Snap the text fields of one fresh output (a stream or a display) onto its stored twin, in place."""
    if stored.get("output_type") != fresh.get("output_type"):
        return
    if fresh.get("output_type") == "stream":
        if stored.get("name") == fresh.get("name"):
            fresh["text"] = snap_within_tolerance(stored["text"], fresh["text"], rel)
        return
    stored_data, fresh_data = stored.get("data", {}), fresh.get("data", {})
    for mime, text in fresh_data.items():
        if mime.startswith("text/") and isinstance(text, str) and isinstance(stored_data.get(mime), str):
            fresh_data[mime] = snap_within_tolerance(stored_data[mime], text, rel)


def install() -> None:
    """Make nbval's comparison of a cell's outputs honour the cell's `NBVAL_TOLERANCE` marker (once)."""
    compare_outputs = IPyNbCell.compare_outputs
    if getattr(compare_outputs, "honours_tolerance", False):
        return

    def compare_outputs_with_tolerance(self, test, ref, skip_compare=None):
        rel = cell_tolerance(self.cell.source)
        if rel is not None and len(test) == len(ref):
            for fresh, stored in zip(test, ref, strict=True):
                _snap_output(stored, fresh, rel)
        return compare_outputs(self, test, ref, skip_compare)

    compare_outputs_with_tolerance.honours_tolerance = True
    IPyNbCell.compare_outputs = compare_outputs_with_tolerance
