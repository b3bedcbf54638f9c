"""The notebooks are committed executed: nbval only compares cells that have a stored run, so an
unexecuted or out-of-order notebook would pass while testing nothing."""

import json
from pathlib import Path

import pytest

from tests.nbval_tolerance import cell_tolerance

FOLDER = Path(__file__).parent.parent / "notebooks"
# both editions: the English notebooks and their Portuguese translations (blog.translations)
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb")) + sorted(FOLDER.glob("pt-br/[0-9][0-9]_*.ipynb"))


def test_the_part1_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS if p.parent == FOLDER]
    assert names[:4] == ["01_config", "02_data_shift", "03_training", "04_eval"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(FOLDER).as_posix())
def test_committed_executed_top_to_bottom_without_errors(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "re-run: make notebooks"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])
    assert not any("ExecuteTime" in c.get("metadata", {}) for c in code)  # record_timing=False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(FOLDER).as_posix())
def test_ignored_outputs_are_explained_and_library_code_is_not_redefined(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        if "# NBVAL_IGNORE_OUTPUT" in lines:
            reason = lines[lines.index("# NBVAL_IGNORE_OUTPUT") + 1]
            assert reason.startswith("# ("), f"say why the output is not compared: {lines[:2]}"
            # only what no run can reproduce: a wall-clock time, a widget's live view, a progress bar
            assert any(word in reason for word in ("timing", "wall-clock", "widget", "progress")), (
                f"an ignored output must be a timing, a widget or a progress bar: {reason}")
        tolerance = [i for i, line in enumerate(lines) if line.startswith("# NBVAL_TOLERANCE")]
        for i in tolerance:
            rel = cell_tolerance(lines[i])
            assert rel <= 0.2, f"{lines[i]}: a tolerance wider than 20 % would hide a broken run"
            assert lines[i + 1].startswith("# ("), f"say why the output is compared within a tolerance: {lines[i]}"
        assert not any(line.startswith("class ") for line in lines), "models and configs live in nanogpt_lib"
        source = "".join(lines)
        for writer in ("open(", "savefig", "torch.save", "save_checkpoint", "write_text", "write_bytes", "to_csv"):
            assert writer not in source, f"notebooks write no files ({writer})"
